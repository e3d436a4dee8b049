"""The metrics of serving/observability/metrics.py as ``ray.serve.metrics`` objects (exported by Ray to Prometheus)."""

from __future__ import annotations

from ray.serve import metrics

from serving.observability.metrics import METRIC_SPECS


class Metrics:
    def __init__(self, names: tuple[str, ...] | None = None):
        """Every metric of serving/observability/metrics.py, or only ``names`` (a tier records its engine's)."""
        self._m = {}
        for spec in (METRIC_SPECS[n] for n in names) if names else METRIC_SPECS.values():
            tags = spec.tags or None
            if spec.kind == "counter":
                obj = metrics.Counter(spec.name, description=spec.description, tag_keys=tags)
            elif spec.kind == "gauge":
                obj = metrics.Gauge(spec.name, description=spec.description, tag_keys=tags)
            else:
                obj = metrics.Histogram(spec.name, description=spec.description, boundaries=spec.buckets, tag_keys=tags)
            self._m[spec.name] = obj

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        if value:  # Ray's counters refuse 0 (e.g. a draft with no agreeing token); adding 0 changes nothing
            self._m[name].inc(value, tags=tags or None)

    def observe(self, name: str, value: float, **tags: str) -> None:
        self._m[name].observe(value, tags=tags or None)

    def set(self, name: str, value: float, **tags: str) -> None:
        self._m[name].set(value, tags=tags or None)
