"""Speculative deferral (``deferral.on_defer: verify``) vs regenerating, side by side in one run:

    python -m benchmarks.speculative --out results/speculative.json --plot results/speculative.png

1. in-process, the test split: every deferred question's weak draft (the whole weak answer, and the
   prefix an exact early deferral leaves) verified by the strong engine through the same function the
   strong tier uses (``serving.engines.verify_draft``), then decoded on. Counts answers that differ from
   strong-only greedy decoding, and the strong tier's work per deferred request: sequential forward
   steps (regenerate: one per answer token; verify: one verify pass + one per token after the kept
   prefix) and tokens decoded;
2. over gRPC, two servers (regenerate, verify) one after the other, same questions: deferred-request
   p50 (sequential unary calls) and throughput of a c=8 closed loop.

Prints tables, writes JSON (and a PNG with --plot). Never asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")

import grpc
import numpy as np

from benchmarks.common import add_config_args, base_config, one_replica, pyplot, test_rows, use_config, write_json
from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc
from serving.config import parse_config
from serving.core.types import Draft, GenerationRequest
from serving.deferral import build_scorer, should_defer
from serving.deferral.incremental import Decision, Verdict
from serving.engines import build_engine, verify_draft
from serving.ops.loadgen import run_load, summarize
from serving.ops.local import cascade_server


def pct(xs, q):
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


# ---- 1: in-process ------------------------------------------------------------------------------------
def offline(texts: list[str]) -> dict:
    cfg = base_config()
    d = cfg.deferral
    scorer = build_scorer(d.rule, d.alpha)
    weak_e, strong_e = (build_engine(t) for t in cfg.tiers)
    max_new = cfg.tiers[1].generation.max_new_tokens
    reqs = [GenerationRequest(prompt=t) for t in texts]
    weak = weak_e.generate_many(reqs)
    strong = strong_e.generate_many(reqs)
    deferred = [i for i, g in enumerate(weak) if should_defer(scorer(g.logprobs), d.threshold)]

    def early_cut(g):
        dec = Decision(scorer, d.rule, d.alpha)
        for n, lp in enumerate(g.logprobs, 1):
            if dec.push([lp], d.threshold) is Verdict.DEFER:
                return n
        return len(g.token_ids)

    async def verify_all(cut: bool):
        async def one(i):
            g = weak[i]
            n = early_cut(g) if cut else len(g.token_ids)
            req, offered, done = await verify_draft(strong_e, reqs[i], Draft(g.token_ids[:n], "", g.tokenizer), max_new)
            if done is None:
                done = await strong_e.generate(req)
            kept = len(req.prefix_ids) if req.prefix_ids else len(done.token_ids)
            return done, offered, done.draft_accepted if done.draft_tokens else kept - 1, kept

        return await asyncio.gather(*(one(i) for i in deferred))

    out = {"n": len(texts), "deferred": len(deferred)}
    regen_steps = [len(strong[i].token_ids) for i in deferred]
    out["regenerate"] = {
        "strong_steps": int(sum(regen_steps)),
        "strong_decoded_tokens": int(sum(regen_steps)),
        "steps_per_deferred": float(np.mean(regen_steps)),
    }
    for name, cut in (("verify_full_draft", False), ("verify_early_draft", True)):
        res = asyncio.run(verify_all(cut))
        diffs = sum(g.token_ids != strong[i].token_ids for (g, *_), i in zip(res, deferred))
        lp_diff = max(
            max((abs(a - b) for a, b in zip(g.logprobs, strong[i].logprobs)), default=0.0)
            for (g, *_), i in zip(res, deferred)
        )
        # steps: 1 verify pass (yields the kept prefix + this model's next token) + one per token after it
        steps = [1 + max(len(g.token_ids) - kept, 0) for g, _, _, kept in res]
        out[name] = {
            "answer_differences": int(diffs),
            "logprob_max_abs_diff": float(lp_diff),
            "draft_tokens": int(sum(o for _, o, _, _ in res)),
            "accepted": int(sum(a for _, _, a, _ in res)),
            "whole_draft_accepted": int(sum(a == o for _, o, a, _ in res)),
            "strong_steps": int(sum(steps)),
            "steps_per_deferred": float(np.mean(steps)),
            "strong_decoded_tokens": int(sum(max(len(g.token_ids) - kept, 0) for g, _, _, kept in res)),
        }
    weak_e.close()
    strong_e.close()
    return out


# ---- 2: over gRPC -------------------------------------------------------------------------------------
def config(mode: str):
    raw = one_replica(base_config().model_dump(mode="json", exclude_none=True))
    raw["deferral"]["on_defer"] = mode
    return parse_config(raw)


async def sequential(address: str, texts: list[str]) -> list[dict]:
    out = []
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.CascadeStub(ch)
        await stub.Generate(pb.GenerateRequest(prompt=texts[0]), timeout=30)
        for p in texts:
            t0 = time.perf_counter()
            r = await stub.Generate(pb.GenerateRequest(prompt=p), timeout=30)
            out.append(
                {
                    "ms": (time.perf_counter() - t0) * 1e3,
                    "deferred": r.deferred,
                    "text": r.text,
                    "strong": (
                        r.tiers[-1].completion_tokens,
                        r.tiers[-1].draft_tokens,
                        r.tiers[-1].draft_accepted_tokens,
                    )
                    if r.deferred
                    else None,
                }
            )
    return out


def served(texts: list[str], n_seq: int, duration: float, workdir: Path) -> dict:
    out, answers = {}, {}
    for mode in ("regenerate", "verify"):
        with cascade_server(config(mode), workdir / mode) as srv:
            seq = asyncio.run(sequential(srv.address, texts[:n_seq]))
            res, el = asyncio.run(run_load(srv.address, texts, concurrency=8, duration=duration))
        answers[mode] = [r["text"] for r in seq]
        deferred = [r for r in seq if r["deferred"]]
        out[mode] = {
            "deferred_p50_ms": pct([r["ms"] for r in deferred], 50),
            "weak_answered_p50_ms": pct([r["ms"] for r in seq if not r["deferred"]], 50),
            "n_deferred": len(deferred),
            "strong_tokens_per_deferred": float(np.mean([r["strong"][0] for r in deferred])),
            "accepted_per_deferred": float(np.mean([r["strong"][2] for r in deferred])),
            "c8": {k: v for k, v in summarize(res, el).items() if k in ("throughput_rps", "latency_ms", "errors")},
        }
    out["answer_differences_over_grpc"] = sum(a != b for a, b in zip(answers["regenerate"], answers["verify"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--sequential", type=int, default=300)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--out", default="results/speculative.json")
    ap.add_argument("--plot")
    add_config_args(ap)
    args = ap.parse_args()
    use_config(args.config)
    texts = [r["prompt"] for r in test_rows(args.data, args.n)]
    report = {"machine": f"{os.cpu_count()} CPUs", "offline": offline(texts)}
    with tempfile.TemporaryDirectory() as tmp:
        report["served"] = served(texts, args.sequential, args.duration, Path(tmp))
    o = report["offline"]
    print(f"\nin-process, {o['n']} test questions, {o['deferred']} deferred: strong work per deferred request")
    print(
        f"{'path':<20} {'differ':>6} {'steps':>6} {'steps/req':>9} {'decoded':>8} {'draft':>6} {'kept':>5} {'whole':>6}"
    )
    r = o["regenerate"]
    print(
        f"{'regenerate':<20} {'-':>6} {r['strong_steps']:>6} {r['steps_per_deferred']:>9.2f} {r['strong_decoded_tokens']:>8}"
    )
    for name in ("verify_full_draft", "verify_early_draft"):
        v = o[name]
        print(
            f"{name:<20} {v['answer_differences']:>6} {v['strong_steps']:>6} {v['steps_per_deferred']:>9.2f} "
            f"{v['strong_decoded_tokens']:>8} {v['draft_tokens']:>6} {v['accepted']:>5} {v['whole_draft_accepted']:>6}"
        )
    s = report["served"]
    print(
        f"\nover gRPC ({args.sequential} sequential questions; c=8 closed loop {args.duration:g} s); answers that differ "
        f"between the two servers: {s['answer_differences_over_grpc']}"
    )
    for mode in ("regenerate", "verify"):
        m = s[mode]
        print(
            f"{mode:<11} deferred p50 {m['deferred_p50_ms']:.1f} ms (n={m['n_deferred']}), weak-answered p50 "
            f"{m['weak_answered_p50_ms']:.1f} ms, c=8 {m['c8']['throughput_rps']:.1f} rps; strong tokens/deferred "
            f"{m['strong_tokens_per_deferred']:.2f}, kept from the draft {m['accepted_per_deferred']:.2f}"
        )
    write_json(report, args.out)
    if args.plot:
        plt = pyplot()

        names = ["regenerate", "verify_full_draft", "verify_early_draft"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        axes[0].bar(names, [o[n]["steps_per_deferred"] for n in names])
        axes[0].set_title("strong sequential steps per deferred request")
        axes[1].bar(["regenerate", "verify"], [s[m]["deferred_p50_ms"] for m in ("regenerate", "verify")])
        axes[1].set_title("deferred p50 over gRPC (ms)")
        for ax in axes:
            ax.grid(alpha=0.3, axis="y")
            ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
