"""A judged boundary served (loopback gRPC), side by side in one run:

    python -m benchmarks.judge_served --out results/judge_served.json --plot results/judge_served.png

One `cascade serve` of ``serving/smol_pair/config_judge.yaml`` (every deployment one replica; the judge,
SmolLM2 from the GGUF, on a replica of its own) on the test split's prompts. Judge **on** and **off** alternate
on the same server (same capacity, same warm caches): "off" requests carry the configured token-level
threshold as their own (``threshold``), which by design skips the judge (a request that sets its threshold is
decided by the rule alone), so the only difference is the judge. Per phase: a closed loop at c=8 for
``--seconds`` s, ``--rounds`` times each, alternating on/off; then one sequential (c=1) judge-on run.
Reported: throughput (median over rounds) on vs off, and p50/p99 latency of judged vs not-judged requests
(from the judge-on runs), the judged share, the judge's own latency and its fallbacks. Never asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")

import numpy as np

from benchmarks.common import pyplot, test_rows, write_json
from serving.config import load_config, parse_config
from serving.ops.loadgen import parse_target, run_load
from serving.ops.local import cascade_server
from serving.ops.probe import one_replica
from serving.smol_pair import CONFIG

JUDGE_CONFIG = CONFIG.with_name("config_judge.yaml")


def pct(xs, q):
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def closed_loop(address: str, texts: list[str], concurrency: int, seconds: float, threshold=None) -> dict:
    """A closed loop over gRPC Generate with `cascade bench`'s load generator; ``threshold``: the per-request
    token threshold (None: the server's, with its judge)."""
    target = parse_target(address, threshold=threshold)
    records, elapsed = asyncio.run(
        run_load(target, texts, concurrency=concurrency, duration=seconds, timeout=120, warm=False)
    )
    ok = [r for r in records if r["code"] == "OK"]
    judged = [r["ms"] for r in ok if "judgement" in r]
    plain = [r["ms"] for r in ok if "judgement" not in r]
    return {
        "concurrency": concurrency,
        "threshold": threshold,
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "elapsed_s": elapsed,
        "throughput_rps": len(ok) / elapsed,
        "judged_share": len(judged) / max(len(ok), 1),
        "deferral_share": sum(r["deferred"] for r in ok) / max(len(ok), 1),
        "decided_by_judge": sum(r["decided_by"] == "judge" for r in ok),
        "fallbacks": sum(bool(r["judgement"]["fallback"]) for r in ok if "judgement" in r),
        "latency_ms": {"p50": pct([r["ms"] for r in ok], 50), "p99": pct([r["ms"] for r in ok], 99)},
        "judged_ms": {"n": len(judged), "p50": pct(judged, 50), "p99": pct(judged, 99)},
        "not_judged_ms": {"n": len(plain), "p50": pct(plain, 50), "p99": pct(plain, 99)},
        "judge_call_ms": {
            "p50": pct([r["judgement"]["latency_ms"] for r in ok if "judgement" in r], 50),
            "p99": pct([r["judgement"]["latency_ms"] for r in ok if "judgement" in r], 99),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(JUDGE_CONFIG))
    ap.add_argument("--data", default=str(CONFIG.parent / "data" / "test.jsonl"))
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", default="results/judge_served.json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    cfg = parse_config(one_replica(load_config(args.config).model_dump(mode="json", exclude_none=True)))
    threshold = cfg.deferral.resolved().threshold
    texts = [r["prompt"] for r in test_rows(args.data, args.prompts)]
    report = {"config": args.config, "prompts": len(texts), "token_threshold": threshold, "runs": []}
    with tempfile.TemporaryDirectory() as tmp, cascade_server(cfg, Path(tmp), timeout=900) as srv:
        closed_loop(srv.address, texts[:4], 2, 5.0)  # warm every path
        for k in range(args.rounds):
            for mode in ("on", "off"):
                run = closed_loop(
                    srv.address, texts, args.concurrency, args.seconds, None if mode == "on" else threshold
                )
                run.update(mode=mode, round=k)
                report["runs"].append(run)
                print(
                    f"round {k} judge {mode:<3} c={args.concurrency}: {run['throughput_rps']:.2f} req/s, "
                    f"judged {run['judged_share']:.2f}, p50 {run['latency_ms']['p50']:.0f} ms, errors {run['errors']}"
                )
        seq = closed_loop(srv.address, texts, 1, args.seconds)
        seq.update(mode="on", round=-1)
        report["sequential"] = seq
    on = [r for r in report["runs"] if r["mode"] == "on"]
    off = [r for r in report["runs"] if r["mode"] == "off"]
    tput_on = float(np.median([r["throughput_rps"] for r in on]))
    tput_off = float(np.median([r["throughput_rps"] for r in off]))
    report["summary"] = {
        "throughput_on_rps": tput_on,
        "throughput_off_rps": tput_off,
        "throughput_ratio_on_off": tput_on / tput_off if tput_off else float("nan"),
        "judged_share_on": float(np.median([r["judged_share"] for r in on])),
        "judged_ms_c8": {k: float(np.median([r["judged_ms"][k] for r in on])) for k in ("p50", "p99")},
        "not_judged_ms_c8": {k: float(np.median([r["not_judged_ms"][k] for r in on])) for k in ("p50", "p99")},
        "off_ms_c8": {k: float(np.median([r["latency_ms"][k] for r in off])) for k in ("p50", "p99")},
        "judged_ms_c1": seq["judged_ms"],
        "not_judged_ms_c1": seq["not_judged_ms"],
        "judge_call_ms_c1": seq["judge_call_ms"],
        "fallbacks": sum(r["fallbacks"] for r in report["runs"]) + seq["fallbacks"],
    }
    s = report["summary"]
    print(f"\n{'':<26} {'p50 ms':>8} {'p99 ms':>8} {'n':>5}")
    for name, d, n in [
        ("judged, c=1", seq["judged_ms"], seq["judged_ms"]["n"]),
        ("not judged, c=1", seq["not_judged_ms"], seq["not_judged_ms"]["n"]),
        ("judged, c=8 (median)", s["judged_ms_c8"], sum(r["judged_ms"]["n"] for r in on)),
        ("not judged, c=8 (median)", s["not_judged_ms_c8"], sum(r["not_judged_ms"]["n"] for r in on)),
        ("judge off, c=8 (median)", s["off_ms_c8"], sum(r["ok"] for r in off)),
    ]:
        print(f"{name:<26} {d['p50']:>8.0f} {d['p99']:>8.0f} {n:>5}")
    print(
        f"c={args.concurrency} throughput: judge on {tput_on:.2f} req/s, off {tput_off:.2f} req/s "
        f"(on/off {s['throughput_ratio_on_off']:.2f}); judged share {s['judged_share_on']:.2f}; "
        f"judge call p50 {s['judge_call_ms_c1']['p50']:.0f} ms (c=1); fallbacks {s['fallbacks']}"
    )
    write_json(report, args.out)
    if args.plot:
        plt = pyplot()
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        labels = ["judged c=1", "not judged c=1", "judged c=8", "not judged c=8", "off c=8"]
        ds = [seq["judged_ms"], seq["not_judged_ms"], s["judged_ms_c8"], s["not_judged_ms_c8"], s["off_ms_c8"]]
        x = np.arange(len(labels))
        a.bar(x - 0.2, [d["p50"] for d in ds], 0.4, label="p50")
        a.bar(x + 0.2, [d["p99"] for d in ds], 0.4, label="p99")
        a.set_xticks(x, labels, rotation=20, fontsize=8)
        a.set_ylabel("latency (ms)")
        a.legend()
        a.set_title("Judged vs not-judged requests")
        b.bar(["judge on", "judge off"], [tput_on, tput_off], color=["tab:orange", "tab:blue"])
        b.set_ylabel(f"throughput at c={args.concurrency} (req/s)")
        b.set_title("Same server, alternating runs")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
