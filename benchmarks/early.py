"""Deciding as tokens arrive, measured side by side in one run (loopback only):

    python -m benchmarks.early --out results/early.json --plot results/early.png

1. decisions: the test split through the weak tier's engine (cached offline run); every answer's
   token log-probs fed to the incremental rule one token at a time; decisions that differ from the
   full-answer rule (exact early deferral must give 0), and weak tokens decoded on deferred requests
   (share of the full weak answer);
2. over gRPC, three servers, one after the other, same prompts: ``off`` (decide on the whole weak
   answer: the old behaviour), ``early`` (exact early deferral, the default) and ``window`` (early +
   ``decide_within_tokens``): sequential unary calls (deferred p50 / weak-answered p50, weak tokens per
   deferred request), closed loop at c=8 (throughput), and sequential GenerateStream calls (time to
   first byte vs the whole answer, for weak-answered and for deferred requests);
3. three tiers: ``serving/three_tier_config.yaml`` (weak -> medium -> strong) over gRPC on the test
   split: answers per tier, accuracy, early decisions per boundary.

Prints tables, writes JSON (and a PNG with --plot). Never asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")

import grpc
import numpy as np

from benchmarks.common import add_config_args, base_config, one_replica, pyplot, test_rows, use_config, write_json
from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc
from serving.config import PACKAGE_DIR, load_config, parse_config
from serving.deferral import build_scorer, should_defer
from serving.deferral.incremental import Decision, Verdict
from serving.evaluation.offline import run_offline
from serving.evaluation.quality import get_metric
from serving.ops.loadgen import run_load, summarize
from serving.ops.local import cascade_server

THREE_TIER = PACKAGE_DIR / "three_tier_config.yaml"


def pct(xs, q):
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


# ---- 1: decisions, offline -----------------------------------------------------------------------------
def offline_decisions(rows: list[dict], window: int) -> dict:
    cfg = base_config()
    d = cfg.deferral
    scorer = build_scorer(d.rule, d.alpha)
    weak = run_offline(cfg, rows, tiers=[cfg.tier_names[0]])[cfg.tier_names[0]]
    out = {"n": len(rows), "rule": d.rule, "threshold": d.threshold}
    diffs, full_tokens, early_tokens, deferred = 0, 0, 0, 0
    for lps in weak.logprobs:
        full = should_defer(scorer(lps), d.threshold)
        dec = Decision(scorer, d.rule, d.alpha)
        for lp in lps:
            if dec.push([lp], d.threshold) is not Verdict.UNDECIDED:
                break
        verdict, _ = dec.finish(lps, d.threshold)
        diffs += (verdict is Verdict.DEFER) != full
        if full:
            deferred += 1
            full_tokens += len(lps)
            early_tokens += dec.decided_at
    out.update(
        decision_differences=diffs,
        deferred=deferred,
        weak_tokens_full=full_tokens,
        weak_tokens_early=early_tokens,
        weak_token_share=early_tokens / max(full_tokens, 1),
    )
    # the window rule is a different rule: how many decisions it changes (its quality: benchmarks/quality.py)
    changed = 0
    for lps in weak.logprobs:
        dec = Decision(scorer, d.rule, d.alpha, window=window)
        changed += (dec.finish(lps, d.threshold)[0] is Verdict.DEFER) != should_defer(scorer(lps), d.threshold)
    out[f"window_{window}_decisions_changed"] = changed
    return out


# ---- 2: over gRPC -------------------------------------------------------------------------------------
def config(mode: str, window: int):
    raw = one_replica(base_config().model_dump(mode="json", exclude_none=True))
    raw["deferral"]["early_deferral"] = mode != "off"
    if mode == "window":
        raw["deferral"]["decide_within_tokens"] = window
    return parse_config(raw)


async def sequential(address: str, texts: list[str], stream: bool) -> list[dict]:
    out = []
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.CascadeStub(ch)
        await stub.Generate(pb.GenerateRequest(prompt=texts[0]), timeout=30)  # warm
        for p in texts:
            t0 = time.perf_counter()
            if stream:
                first, last = None, None
                async for m in stub.GenerateStream(pb.GenerateRequest(prompt=p), timeout=30):
                    if first is None and m.text:
                        first = (time.perf_counter() - t0) * 1e3
                    last = m
                r = last
                ttfb = first
            else:
                r = await stub.Generate(pb.GenerateRequest(prompt=p), timeout=30)
                ttfb = None
            ms = (time.perf_counter() - t0) * 1e3
            weak = r.tiers[0]
            out.append(
                {
                    "ms": ms,
                    "ttfb_ms": ttfb,
                    "tier": r.tier,
                    "deferred": r.deferred,
                    "weak_tokens": weak.completion_tokens,
                    "decided_early": weak.decided_early,
                }
            )
    return out


def split(rs: list[dict], key: str = "ms") -> dict:
    weak = [r[key] for r in rs if not r["deferred"] and r[key] is not None]
    deferred = [r[key] for r in rs if r["deferred"] and r[key] is not None]
    return {
        "weak_answered_p50": pct(weak, 50),
        "deferred_p50": pct(deferred, 50),
        "deferred_over_weak": pct(deferred, 50) / pct(weak, 50) if weak else float("nan"),
        "n_weak": len(weak),
        "n_deferred": len(deferred),
    }


def served(texts: list[str], n_seq: int, duration: float, window: int, workdir: Path) -> dict:
    out = {}
    for mode in ("off", "early", "window"):
        with cascade_server(config(mode, window), workdir / mode) as srv:
            unary = asyncio.run(sequential(srv.address, texts[:n_seq], stream=False))
            streamed = asyncio.run(sequential(srv.address, texts[:n_seq], stream=True))
            res, el = asyncio.run(run_load(srv.address, texts, concurrency=8, duration=duration))
        deferred = [r for r in unary if r["deferred"]]
        out[mode] = {
            "unary": split(unary),
            "weak_tokens_per_deferred": float(np.mean([r["weak_tokens"] for r in deferred])) if deferred else 0.0,
            "early_share_of_deferred": float(np.mean([r["decided_early"] for r in deferred])) if deferred else 0.0,
            "deferral_share": len(deferred) / len(unary),
            "stream_ttfb": split(streamed, "ttfb_ms"),
            "stream_total": split(streamed),
            "ttfb_over_total_weak": (
                pct([r["ttfb_ms"] for r in streamed if not r["deferred"]], 50)
                / pct([r["ms"] for r in streamed if not r["deferred"]], 50)
            ),
            "c8": {
                k: v
                for k, v in summarize(res, el).items()
                if k in ("throughput_rps", "latency_ms", "errors", "deferral_share")
            },
        }
    return out


# ---- 3: three tiers -------------------------------------------------------------------------------------
def three_tiers(texts: list[str], refs: list[str], workdir: Path) -> dict:
    cfg = load_config(THREE_TIER)
    metric = get_metric("exact_match")

    async def run(address):
        sem = asyncio.Semaphore(8)
        async with grpc.aio.insecure_channel(address) as ch:
            stub = pb_grpc.CascadeStub(ch)

            async def one(p):
                async with sem:
                    return await stub.Generate(pb.GenerateRequest(prompt=p), timeout=60)

            return await asyncio.gather(*(one(p) for p in texts))

    with cascade_server(cfg, workdir / "three") as srv:
        rs = asyncio.run(run(srv.address))
    by_tier = Counter(r.tier for r in rs)
    early = Counter(t.tier for r in rs for t in r.tiers if t.decided_early)
    acc = {t: float(np.mean([metric(r.text, ref) for r, ref in zip(rs, refs) if r.tier == t])) for t in by_tier}
    return {
        "n": len(rs),
        "answers_by_tier": dict(by_tier),
        "accuracy_by_tier": acc,
        "accuracy": float(np.mean([metric(r.text, ref) for r, ref in zip(rs, refs)])),
        "early_decisions_by_tier": dict(early),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="test-split questions for the offline and 3-tier parts")
    ap.add_argument("--sequential", type=int, default=300, help="questions sent one by one per server")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of the c=8 closed loop")
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--out", default="results/early.json")
    ap.add_argument("--plot")
    add_config_args(ap)
    ap.add_argument("--no-three-tiers", action="store_true")
    args = ap.parse_args()
    use_config(args.config)
    rows = test_rows(args.data, args.n)
    texts = [r["prompt"] for r in rows]
    report = {"machine": f"{os.cpu_count()} CPUs", "offline": offline_decisions(rows, args.window)}
    with tempfile.TemporaryDirectory() as tmp:
        report["served"] = served(texts, args.sequential, args.duration, args.window, Path(tmp))
        if THREE_TIER.exists() and not args.no_three_tiers:
            report["three_tiers"] = three_tiers(texts, [r["reference"] for r in rows], Path(tmp))

    o = report["offline"]
    print(
        f"\noffline, {o['n']} test questions, {o['rule']} < {o['threshold']}: early vs full-answer decisions differ "
        f"in {o['decision_differences']}; weak tokens on the {o['deferred']} deferred: {o['weak_tokens_early']} of "
        f"{o['weak_tokens_full']} ({o['weak_token_share']:.1%}); a {args.window}-token window changes "
        f"{o[f'window_{args.window}_decisions_changed']} decisions"
    )
    print(f"\nover gRPC (sequential, {args.sequential} questions; c=8 closed loop {args.duration:g} s)")
    print(
        f"{'mode':<7} {'weak p50':>9} {'defer p50':>10} {'ratio':>6} {'weak tok/def':>13} {'c=8 rps':>8} "
        f"{'TTFB weak':>10} {'total weak':>11} {'TTFB/total':>11} {'TTFB defer':>11}"
    )
    for mode, r in report["served"].items():
        u, t, tot = r["unary"], r["stream_ttfb"], r["stream_total"]
        print(
            f"{mode:<7} {u['weak_answered_p50']:>9.1f} {u['deferred_p50']:>10.1f} {u['deferred_over_weak']:>6.2f} "
            f"{r['weak_tokens_per_deferred']:>13.2f} {r['c8']['throughput_rps']:>8.1f} {t['weak_answered_p50']:>10.1f} "
            f"{tot['weak_answered_p50']:>11.1f} {r['ttfb_over_total_weak']:>11.2f} {t['deferred_p50']:>11.1f}"
        )
    if "three_tiers" in report:
        t = report["three_tiers"]
        print(
            f"\nthree tiers on {t['n']} test questions: answers {t['answers_by_tier']}, accuracy {t['accuracy']:.3f} "
            f"(by tier {json.dumps({k: round(v, 3) for k, v in t['accuracy_by_tier'].items()})}), early decisions "
            f"{t['early_decisions_by_tier']}"
        )
    write_json(report, args.out)
    if args.plot:
        plt = pyplot()

        modes = list(report["served"])
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        x = np.arange(len(modes))
        for off, key, label in ((-0.2, "weak_answered_p50", "weak-answered"), (0.2, "deferred_p50", "deferred")):
            axes[0].bar(x + off, [report["served"][m]["unary"][key] for m in modes], 0.4, label=label)
            axes[1].bar(x + off, [report["served"][m]["stream_ttfb"][key] for m in modes], 0.4, label=label)
        for ax, title in zip(axes, ("unary p50 latency (ms)", "GenerateStream time to first byte p50 (ms)")):
            ax.set_xticks(x, modes)
            ax.set_title(title)
            ax.legend()
            ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
