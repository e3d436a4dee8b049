"""The OpenAI-compatible HTTP front vs gRPC on the same server, side by side (loopback only):

    python -m benchmarks.openai_front --out results/openai_front.json

One `cascade serve` (one replica per deployment), the same held-out prompts; closed loops at c=1 and
c=8 over gRPC (`Generate`) and over HTTP (`POST /v1/chat/completions`, aiohttp, non-streaming),
alternating, each for --duration seconds: throughput, p50/p99 and the HTTP/gRPC ratios. Never asserts
timings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")

import numpy as np

from benchmarks.common import one_replica, prompts, write_json
from serving.config import TOY_CONFIG, load_config, parse_config
from serving.ops.loadgen import run_load, summarize
from serving.ops.local import cascade_server, wait_for


async def http_load(base: str, texts: list[str], concurrency: int, duration: float) -> dict:
    import aiohttp

    lat, counter = [], iter(range(10**9))
    async with aiohttp.ClientSession() as s:

        async def one(i):
            body = {"model": "cascade", "messages": [{"role": "user", "content": texts[i % len(texts)]}]}
            async with s.post(base + "/chat/completions", json=body) as r:
                await r.json()
                return r.status

        await one(0)
        t0 = time.perf_counter()

        async def worker():
            while time.perf_counter() - t0 < duration:
                st = time.perf_counter()
                if await one(next(counter)) == 200:
                    lat.append((time.perf_counter() - st) * 1e3)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        el = time.perf_counter() - t0
    return {
        "throughput_rps": len(lat) / el,
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--out", default="results/openai_front.json")
    args = ap.parse_args()
    texts = prompts(None)
    cfg = parse_config(one_replica(load_config(TOY_CONFIG).model_dump(mode="json", exclude_none=True)))
    report = {"machine": f"{os.cpu_count()} CPUs", "duration_s": args.duration}
    with tempfile.TemporaryDirectory() as tmp, cascade_server(cfg, Path(tmp)) as srv:
        import urllib.request

        wait_for(
            lambda: urllib.request.urlopen(srv.http_url + "/models", timeout=5).status == 200,
            60,
            what="the HTTP routes",
        )
        for c in (1, 8):
            res, el = asyncio.run(run_load(srv.address, texts, concurrency=c, duration=args.duration))
            g = summarize(res, el)
            h = asyncio.run(http_load(srv.http_url, texts, c, args.duration))
            report[f"c{c}"] = {
                "grpc": {"throughput_rps": g["throughput_rps"], "latency_ms": g["latency_ms"]},
                "http": h,
                "http_over_grpc_p50": h["latency_ms"]["p50"] / g["latency_ms"]["p50"],
                "http_over_grpc_rps": h["throughput_rps"] / g["throughput_rps"],
            }
    print(
        f"{'c':>3} {'gRPC rps':>9} {'gRPC p50':>9} {'HTTP rps':>9} {'HTTP p50':>9} {'p50 ratio':>10} {'rps ratio':>10}"
    )
    for c in (1, 8):
        r = report[f"c{c}"]
        print(
            f"{c:>3} {r['grpc']['throughput_rps']:>9.1f} {r['grpc']['latency_ms']['p50']:>9.1f} "
            f"{r['http']['throughput_rps']:>9.1f} {r['http']['latency_ms']['p50']:>9.1f} "
            f"{r['http_over_grpc_p50']:>10.2f} {r['http_over_grpc_rps']:>10.2f}"
        )
    write_json(report, args.out)


if __name__ == "__main__":
    main()
