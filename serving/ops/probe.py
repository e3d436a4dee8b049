"""The planner's measurements: a short run against a local one-replica cascade (``cascade plan``).

Starts ``cascade serve`` (serving.ops.local) with every deployment pinned to one replica, runs closed
loops of the cascade at a few concurrencies and records, per run, each tier's latency as the router
saw it (``TierResult.latency_ms``) and its mean requests in flight — the report shape of
``benchmarks/load.py`` (``runs.<mode>.tiers.<tier>``), which ``serving.ops.planner.curves_from_report``
reads. Loopback only; bounded by its concurrencies x seconds.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from serving.config import CascadeConfig, parse_config
from serving.ops.planner import tier_summary


def one_replica(raw: dict) -> dict:
    """A config mapping with every deployment pinned to one replica (no autoscaling), so that runs
    compared side by side see the same capacity."""
    for d in [t["serve"] for t in raw["tiers"]] + [raw["router"]]:
        d.pop("autoscaling_config", None)
        d["num_replicas"] = 1
    return raw


async def closed_loop_tiers(address: str, texts: Sequence[str], concurrency: int, seconds: float,
                            timeout: float = 60.0) -> dict[str, Any]:
    """``concurrency`` callers sending Generate back to back for ``seconds``: throughput, errors,
    deferral share and each tier's ``tier_summary``."""
    import grpc

    from serving._proto.cascade.v1 import cascade_pb2 as pb
    from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc

    per_tier: dict[str, list[float]] = {}
    engine: dict[str, list[float]] = {}
    ok, errors, deferred = 0, 0, 0
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.CascadeStub(ch)
        await stub.Generate(pb.GenerateRequest(prompt=texts[0]), timeout=timeout)  # warm
        t0 = time.perf_counter()
        counter = iter(range(10**9))

        async def caller():
            nonlocal ok, errors, deferred
            while time.perf_counter() - t0 < seconds:
                try:
                    r = await stub.Generate(pb.GenerateRequest(prompt=texts[next(counter) % len(texts)]), timeout=timeout)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                ok, deferred = ok + 1, deferred + r.deferred
                for t in r.tiers:
                    per_tier.setdefault(t.tier, []).append(t.latency_ms)
                    engine.setdefault(t.tier, []).append(t.tier_ms)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": ok + errors, "ok": ok, "errors": errors,
            "throughput_rps": ok / elapsed, "deferral_share": deferred / ok if ok else 0.0, "forced_tier": "",
            "tiers": {t: tier_summary(v, elapsed, engine[t]) for t, v in per_tier.items()}}


def probe(cfg: CascadeConfig, workdir: Path, concurrencies: Sequence[int] = (1, 2, 4, 8, 16), seconds: float = 4.0,
          texts: Optional[Sequence[str]] = None, log=print) -> dict[str, Any]:
    """Measure ``cfg``'s tiers on one replica each; returns a report for ``curves_from_report``."""
    from serving.evaluation.data import SPLIT_SEEDS
    from serving.ops.local import cascade_server
    from serving.tasks.arithmetic import examples

    texts = list(texts) if texts else [e.prompt for e in examples(SPLIT_SEEDS["test"], 1000)]
    pinned = parse_config(one_replica(cfg.model_dump(mode="json", exclude_none=True)))
    runs = {}
    with cascade_server(pinned, workdir) as srv:
        for c in concurrencies:
            runs[f"c{c}"] = run = asyncio.run(closed_loop_tiers(srv.address, texts, c, seconds))
            log(f"probe: concurrency {c}: {run['throughput_rps']:.1f} req/s, deferral {run['deferral_share']:.3f}, "
                + ", ".join(f"{t} p50 {s.get('p50_ms', 0):.1f} ms ({s['in_flight']:.2f} in flight)"
                            for t, s in run["tiers"].items()))
    return {"probe": {"concurrencies": list(concurrencies), "seconds": seconds}, "runs": runs}
