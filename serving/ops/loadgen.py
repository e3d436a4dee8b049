"""The one gRPC load generator (loopback): closed loop (``concurrency`` callers back to back) or open
loop (arrivals at given offsets), every call a ``Generate`` with its outcome recorded. ``cascade plan``'s
probe, the benchmarks and the tests drive the cascade with it. Every run is bounded by its duration
(or its arrivals) and stops by itself; it never asserts timings."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from typing import Optional

import numpy as np


def arrivals(qps: float, duration: float, seed: int) -> list[float]:
    """Poisson arrival offsets (s) at ``qps`` over ``duration``."""
    rng, t, out = random.Random(seed), 0.0, []
    while True:
        t += rng.expovariate(qps)
        if t >= duration:
            return out
        out.append(t)


def step_arrivals(steps: list[tuple[float, float]], seed: int) -> list[float]:
    """Arrivals in steps of (qps, seconds)."""
    out, start = [], 0.0
    for k, (qps, secs) in enumerate(steps):
        out += [start + t for t in arrivals(qps, secs, seed + k)]
        start += secs
    return out


async def one_call(
    stub, prompt: str, force_tier: str = "", timeout: float = 30.0, metadata: Sequence = (), decoding=None
) -> dict:
    """One Generate: its status code, client latency, trailing metadata and, when OK, where the time went.
    ``decoding``: a ``cascade.v1.Decoding`` message (default: none, greedy)."""
    import grpc

    from serving._proto.cascade.v1 import cascade_pb2 as pb

    t0 = time.perf_counter()
    call = stub.Generate(
        pb.GenerateRequest(prompt=prompt, force_tier=force_tier, decoding=decoding),
        metadata=list(metadata),
        timeout=timeout,
    )
    try:
        r = await call
    except grpc.aio.AioRpcError as e:
        return {
            "code": e.code().name,
            "ms": (time.perf_counter() - t0) * 1e3,
            "trailing": dict(e.trailing_metadata() or ()),
        }
    ms = (time.perf_counter() - t0) * 1e3
    return {
        "code": "OK",
        "ms": ms,
        "trailing": dict(await call.trailing_metadata() or ()),
        "tier": r.tier,
        "deferred": r.deferred,
        "tier_ms": sum(t.tier_ms for t in r.tiers),
        "router_ms": r.total_latency_ms,
        "hop_ms": sum(t.latency_ms - t.tier_ms for t in r.tiers),
        "tier_latency_ms": {t.tier: t.latency_ms for t in r.tiers},
        "tier_engine_ms": {t.tier: t.tier_ms for t in r.tiers},
    }


async def run_load(
    address: str,
    texts: Sequence[str],
    *,
    times: Optional[list[float]] = None,
    concurrency: int = 0,
    duration: float = 10.0,
    force_tier: str = "",
    timeout: float = 30.0,
    metadata: Sequence = (),
    retry_after: bool = False,
    warm: bool = True,
    decoding=None,
) -> tuple[list[dict], float]:
    """Open loop when ``times`` (arrival offsets, s) is given, else closed loop with ``concurrency``
    callers for ``duration`` seconds. ``retry_after``: a closed-loop caller honours a ``retry-after-ms``
    hint before its next call. ``warm``: one call first, not recorded. Returns (records, elapsed s); each
    record has ``t`` (s into the run) and :func:`one_call`'s fields."""
    import grpc

    from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc

    results: list[dict] = []
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.CascadeStub(ch)
        if warm:
            await one_call(stub, texts[0], force_tier, timeout, metadata, decoding)
        t0 = time.perf_counter()
        if times is not None:

            async def fire(i: int, at: float):
                await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
                results.append(
                    {"t": at, **await one_call(stub, texts[i % len(texts)], force_tier, timeout, metadata, decoding)}
                )

            await asyncio.gather(*(fire(i, at) for i, at in enumerate(times)))
        else:
            counter = iter(range(10**9))

            async def caller():
                while (now := time.perf_counter() - t0) < duration:
                    r = await one_call(stub, texts[next(counter) % len(texts)], force_tier, timeout, metadata, decoding)
                    results.append({"t": now, **r})
                    if retry_after and "retry-after-ms" in r["trailing"]:
                        await asyncio.sleep(int(r["trailing"]["retry-after-ms"]) / 1e3)

            await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return results, elapsed


def _pct(xs, q) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def summarize(results: list[dict], elapsed: float) -> dict:
    """Throughput, latency quantiles, errors by code, deferral share, answers per tier, the router's own
    overhead and where it goes, and each tier as the router saw it (the planner's input)."""
    from serving.ops.planner import tier_summary

    ok = [r for r in results if r["code"] == "OK"]
    lat = [r["ms"] for r in ok]
    weak_answered = [r for r in ok if not r["deferred"] and r["tier"] == "weak"]
    overhead = [r["ms"] - r["tier_ms"] for r in weak_answered]
    by_answer = {"weak": [r["ms"] for r in weak_answered], "deferred": [r["ms"] for r in ok if r["deferred"]]}
    return {
        "requests": len(results),
        "ok": len(ok),
        "elapsed_s": elapsed,
        "throughput_rps": len(ok) / elapsed if elapsed else 0.0,
        "latency_ms": {"p50": _pct(lat, 50), "p90": _pct(lat, 90), "p99": _pct(lat, 99)},
        "errors": dict(Counter(r["code"] for r in results if r["code"] != "OK")),
        "deferral_share": (sum(r["deferred"] for r in ok) / len(ok)) if ok else 0.0,
        "answers_by_tier": dict(Counter(r["tier"] for r in ok)),
        "router_overhead_ms": {
            "n": len(overhead),
            "p50": _pct(overhead, 50),
            "p99": _pct(overhead, 99),
            # where it goes (weak-answered requests, p50): Serve's gRPC proxy, the
            # router's own code, and the router -> tier handle call
            "proxy_p50": _pct([r["ms"] - r["router_ms"] for r in weak_answered], 50),
            "router_code_p50": _pct([r["router_ms"] - r["tier_ms"] - r["hop_ms"] for r in weak_answered], 50),
            "handle_hop_p50": _pct([r["hop_ms"] for r in weak_answered], 50),
        },
        "tier_ms": {"p50": _pct([r["tier_ms"] for r in ok], 50)},
        # weak-only answers vs deferred ones (what a cascade costs when it defers)
        "latency_by_answer_ms": {
            k: {"n": len(v), "p50": _pct(v, 50), "p90": _pct(v, 90)} for k, v in by_answer.items()
        },
        "deferred_over_weak_p50": (
            _pct(by_answer["deferred"], 50) / _pct(by_answer["weak"], 50) if by_answer["weak"] else float("nan")
        ),
        # each tier as the router saw it: requests, mean in flight, latency quantiles (cascade plan --measured)
        "tiers": {
            t: tier_summary(
                [r["tier_latency_ms"][t] for r in ok if t in r["tier_latency_ms"]],
                elapsed,
                [r["tier_engine_ms"][t] for r in ok if t in r["tier_engine_ms"]],
            )
            for t in sorted({t for r in ok for t in r["tier_latency_ms"]})
        },
    }
