"""What the system tells about itself: ``metrics.py`` (the Prometheus metric specs as data; the Serve
side records them through ``serving.serve.metrics``) and ``shadow.py`` (shadow sampling of accepted
answers against the next tier).

May import: ``serving.core``, ``serving.evaluation`` (quality metrics). No Ray.
"""
