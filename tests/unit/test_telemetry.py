"""The Grafana dashboard in cluster/grafana/ reads only the metrics serving/observability/metrics.py declares, and all of them.

No Ray is started: the dashboard is JSON, the metrics are data.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from serving.observability.metrics import METRIC_SPECS

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "cluster" / "grafana" / "cascade-dashboard.json"

# Tags Ray adds to every metric it exports (Serve adds the first three from the replica context).
RAY_TAGS = {
    "application",
    "deployment",
    "replica",
    "SessionName",
    "NodeAddress",
    "WorkerId",
    "Component",
    "Version",
    "instance",
    "job",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
SERIES = re.compile(r"\bray_cascade_[A-Za-z0-9_]+")
SELECTOR = re.compile(r"\b(ray_cascade_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
BY = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside collapsed rows
    return out


def _graph_panels(dash: dict) -> list[dict]:
    return [p for p in _panels(dash) if p["type"] != "row"]


def _exprs(dash: dict) -> list[str]:
    return [t["expr"] for p in _graph_panels(dash) for t in p["targets"]]


def _declared(series: str) -> str | None:
    """The METRIC_SPECS key of an exported series name (histogram suffixes stripped), or None."""
    exported = {m.exported: m.name for m in METRIC_SPECS.values()}
    if series in exported:
        return exported[series]
    for suffix in HISTOGRAM_SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and base in exported and METRIC_SPECS[exported[base]].kind == "histogram":
            return exported[base]
    return None


def test_parses_with_stable_identity(dashboard):
    assert dashboard["uid"] == "cascade-overview"
    assert dashboard["title"] == "Cascade overview"
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "label_values(ray_cascade_requests_total, application)" in json.dumps(variables["application"])


def test_panel_ids_unique(dashboard):
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_every_panel_has_datasource_and_targets(dashboard):
    panels = _graph_panels(dashboard)
    assert panels
    for p in panels:
        assert p.get("datasource", {}).get("uid") == "${datasource}", p["title"]
        assert p.get("targets"), p["title"]
        for t in p["targets"]:
            assert t.get("expr", "").strip(), p["title"]
            assert t.get("datasource", p["datasource"])["uid"] == "${datasource}", p["title"]
        assert p["fieldConfig"]["defaults"].get("unit") or p["type"] == "heatmap", f"{p['title']}: no unit"


def test_rows_and_units(dashboard):
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert {"Traffic", "Cascade", "Latency", "Tiers"} <= set(rows)
    units = {p["fieldConfig"]["defaults"].get("unit") for p in _graph_panels(dashboard)}
    assert {"ms", "percentunit", "reqps"} <= units
    assert any(p["type"] == "heatmap" for p in _graph_panels(dashboard))
    assert any(p["type"] == "stat" for p in _graph_panels(dashboard))


def test_every_series_is_declared(dashboard):
    for expr in _exprs(dashboard):
        for series in SERIES.findall(expr):
            assert _declared(series), (
                f"{series} (in {expr!r}) is not a metric in serving.observability.metrics.METRIC_SPECS"
            )


def test_every_metric_is_on_the_dashboard(dashboard):
    used = {_declared(s) for expr in _exprs(dashboard) for s in SERIES.findall(expr)}
    missing = sorted(set(METRIC_SPECS) - used)
    assert not missing, f"metrics with no panel: {missing}"


def test_histograms_are_read_through_their_buckets(dashboard):
    exprs = " ".join(_exprs(dashboard))
    for m in METRIC_SPECS.values():
        if m.kind == "histogram":
            assert f"{m.exported}_bucket" in exprs, m.name
            assert not re.search(rf"\b{m.exported}\b(?!_)", exprs), f"{m.exported} is not a series (use _bucket)"


def test_label_names_are_declared_tags(dashboard):
    for expr in _exprs(dashboard):
        metrics = [METRIC_SPECS[_declared(s)] for s in SERIES.findall(expr) if _declared(s)]
        for series, body in SELECTOR.findall(expr):
            if not _declared(series):
                continue  # reported by test_every_series_is_declared
            m = METRIC_SPECS[_declared(series)]
            allowed = set(m.tags) | RAY_TAGS | ({"le"} if series.endswith("_bucket") else set())
            for label in MATCHER.findall(body):
                assert label in allowed, f"{series} has no tag {label!r} (in {expr!r})"
        if not metrics:
            continue
        allowed = set().union(*(m.tags for m in metrics)) | RAY_TAGS | {"le"}
        for group in BY.findall(expr):
            for label in filter(None, (x.strip() for x in group.split(","))):
                assert label in allowed, f"grouping by {label!r}, a tag no metric in {expr!r} has"


def test_serve_builtins_exist_in_installed_ray(dashboard):
    """Ray Serve's own metrics that the dashboard reads are defined by the installed Ray."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed")
    serve_private = Path(list(spec.submodule_search_locations)[0]) / "serve" / "_private"
    source = "\n".join(f.read_text(errors="replace") for f in serve_private.glob("*.py"))
    builtins = {s for expr in _exprs(dashboard) for s in re.findall(r"\bray_(serve_[A-Za-z0-9_]+)", expr)}
    assert builtins, "expected at least one Serve built-in (healthy replicas)"
    for name in builtins:
        for suffix in ("_total", *HISTOGRAM_SUFFIXES):
            name = name.removesuffix(suffix)
        assert f'"{name}"' in source, f"ray_{name} is not defined in {serve_private}"
