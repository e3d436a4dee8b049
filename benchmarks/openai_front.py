"""The OpenAI-compatible HTTP front vs gRPC on the same server, side by side (loopback only):

    python -m benchmarks.openai_front --out results/openai_front.json

One `cascade serve` (one replica per deployment), the same held-out prompts; closed loops at c=1 and c=8 over
gRPC (`Generate`) and over HTTP (`POST /v1/chat/completions`, non-streaming), driven by `cascade bench`'s
side-by-side runs (serving/ops/bench.py): --rounds rounds alternating gRPC/HTTP, --duration seconds each;
throughput, p50/p99 (medians over the rounds) and the HTTP/gRPC ratios. Never asserts timings.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")

from benchmarks.common import one_replica, prompts, write_json
from serving.config import TOY_CONFIG, load_config, parse_config
from serving.ops.bench import Load, report_table, side_by_side
from serving.ops.loadgen import CASCADE, parse_target
from serving.ops.local import cascade_server, wait_for

CONCURRENCY = (1, 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(TOY_CONFIG), help="cascade config (default: the arithmetic toy pair)")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2, help="rounds per protocol, alternating (medians reported)")
    ap.add_argument("--out", default="results/openai_front.json")
    args = ap.parse_args()
    texts = prompts(None)
    cfg = parse_config(one_replica(load_config(args.config).model_dump(mode="json", exclude_none=True)))
    report = {"machine": f"{os.cpu_count()} CPUs", "duration_s": args.duration, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp, cascade_server(cfg, Path(tmp)) as srv:
        import urllib.request

        wait_for(
            lambda: urllib.request.urlopen(srv.http_url + "/models", timeout=5).status == 200,
            60,
            what="the HTTP routes",
        )
        sides = {
            "grpc": (parse_target(srv.address), {CASCADE: 1.0}),
            "http": (parse_target(srv.http_url), {CASCADE: 1.0}),
        }
        for c in CONCURRENCY:
            run = side_by_side(sides, texts, Load(concurrency=c, duration=args.duration), args.rounds)
            run.pop("samples")
            report[f"c{c}"] = run
            print(f"c={c}\n{report_table(run)}\n", flush=True)
    print(
        f"{'c':>3} {'gRPC rps':>9} {'gRPC p50':>9} {'HTTP rps':>9} {'HTTP p50':>9} {'p50 ratio':>10} {'rps ratio':>10}"
    )
    for c in CONCURRENCY:
        g, h, r = report[f"c{c}"]["median"]["grpc"], report[f"c{c}"]["median"]["http"], report[f"c{c}"]["ratio"]
        print(
            f"{c:>3} {g['rps']:>9.1f} {g['p50 ms']:>9.1f} {h['rps']:>9.1f} {h['p50 ms']:>9.1f} "
            f"{r['p50 ms']:>10.2f} {r['rps']:>10.2f}"
        )
    write_json(report, args.out)


if __name__ == "__main__":
    main()
