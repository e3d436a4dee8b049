"""The planner's measurements: a short run against a local one-replica cascade (``cascade plan``).

Starts ``cascade serve`` (serving.ops.local) with every deployment pinned to one replica, runs closed
loops of the cascade at a few concurrencies and records, per run, each tier's latency as the router
saw it (``TierResult.latency_ms``) and its mean requests in flight — the report shape of
``benchmarks/load.py`` (``runs.<mode>.tiers.<tier>``), which ``serving.ops.planner.curves_from_report``
reads. Loopback only; bounded by its concurrencies x seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from serving.config import CascadeConfig, parse_config
from serving.ops.loadgen import run_load, summarize


def one_replica(raw: dict) -> dict:
    """A config mapping with every deployment pinned to one replica (no autoscaling), so that runs
    compared side by side see the same capacity."""
    judges = [d.get("judge") for d in [raw.get("deferral") or {}] + [t.get("deferral") or {} for t in raw["tiers"]]]
    judges = [j for j in judges if isinstance(j, dict) and isinstance(j.get("model"), dict) and "serve" in j]
    for d in [t["serve"] for t in raw["tiers"]] + [j["serve"] for j in judges] + [raw["router"]]:
        d.pop("autoscaling_config", None)
        d["num_replicas"] = 1
    return raw


def probe(
    cfg: CascadeConfig,
    workdir: Path,
    concurrencies: Sequence[int] = (1, 2, 4, 8, 16),
    seconds: float = 4.0,
    texts: Optional[Sequence[str]] = None,
    log=print,
) -> dict[str, Any]:
    """Measure ``cfg``'s tiers on one replica each; returns a report for ``curves_from_report``."""
    from serving.evaluation.data import SPLIT_SEEDS
    from serving.ops.local import cascade_server
    from serving.tasks.arithmetic import examples

    texts = list(texts) if texts else [e.prompt for e in examples(SPLIT_SEEDS["test"], 1000)]
    pinned = parse_config(one_replica(cfg.model_dump(mode="json", exclude_none=True)))
    runs = {}
    with cascade_server(pinned, workdir) as srv:
        for c in concurrencies:
            results, elapsed = asyncio.run(run_load(srv.address, texts, concurrency=c, duration=seconds, timeout=60))
            runs[f"c{c}"] = run = summarize(results, elapsed) | {"concurrency": c, "forced_tier": ""}
            log(
                f"probe: concurrency {c}: {run['throughput_rps']:.1f} req/s, deferral {run['deferral_share']:.3f}, "
                + ", ".join(
                    f"{t} p50 {s.get('p50_ms', 0):.1f} ms ({s['in_flight']:.2f} in flight)"
                    for t, s in run["tiers"].items()
                )
            )
    return {"probe": {"concurrencies": list(concurrencies), "seconds": seconds}, "runs": runs}
