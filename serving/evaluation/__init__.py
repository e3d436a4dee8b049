"""Offline evaluation: labelled data (``data.py``), quality metrics (``quality.py``), offline tier runs
with a cache (``offline.py``), deferral curves and their summaries (``curves.py``: AUC, APGR, CPT),
fitting rules on labelled runs (``fit.py``), threshold search (``thresholds.py``), ``cascade calibrate``
(``calibrate.py``) and shadow samples as labelled data (``shadow_data.py``).

May import: ``serving.core``, ``serving.deferral``, ``serving.config``, ``serving.tasks`` (engines only
inside ``offline.run_tier``). No Ray.
"""
