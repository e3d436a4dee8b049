"""Shadow sampling: its live estimate of the quality the cascade gives up, against the truth, and what
it costs client latency (loopback only):

    python -m benchmarks.shadow --n 1000 --rate 0.05 --concurrency 8 --out results/shadow.json --plot results/shadow.png

A labelled stream (the arithmetic test split: questions with references) goes through `cascade serve`
(one replica per deployment) once per condition, each question once, `--concurrency` callers: shadow
off (rate 0) and shadow on (`--rate`); `--repeats` pairs, in alternating order (off-on, on-off, ...). Reported:

- the shadow estimate after the "on" run(s): agreement of accepted weak answers with the strong tier's,
  with its 95% Wilson interval, and sampled/completed/dropped counts (from `cascade status`);
- the truth on the same stream: the strong tier's answer to *every* accepted question (run in-process
  through the same engine, cached) -> the real agreement rate, and the real quality loss measured
  against the references (strong correct minus weak correct, over accepted answers) — whether each
  falls inside the estimate's interval;
- client latency p50/p90 and throughput, shadow on vs off, side by side, and the p50 ratio.

`--threshold` sets the deferral threshold (default -1.0: the shipped -0.3 defers nearly every weak
mistake, leaving too few disagreements to show an estimate at work). Never asserts anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")

import numpy as np

from benchmarks.common import one_replica, pyplot, write_json
from serving.config import TOY_CONFIG, load_config, parse_config
from serving.evaluation.data import SPLIT_SEEDS
from serving.evaluation.offline import DEFAULT_CACHE, run_offline
from serving.evaluation.quality import exact_match
from serving.evaluation.shadow_data import read_samples
from serving.observability.shadow import wilson
from serving.ops.loadgen import parse_target, run_load
from serving.ops.local import cascade_server, wait_for
from serving.tasks.arithmetic import examples


def stream_once(address: str, prompts: list[str], concurrency: int, timeout: float = 60.0) -> tuple[list, float]:
    """Each prompt once, ``concurrency`` callers back to back (`cascade bench`'s generator); (index, code, ms,
    text, deferred) per call."""
    target = parse_target(address)
    for tier in (
        "weak",
        "strong",
    ):  # warm both tiers with forced requests (never shadowed: the estimate sees the stream)
        asyncio.run(
            run_load(
                target,
                prompts,
                concurrency=concurrency,
                requests=64,
                duration=math.inf,
                mix={tier: 1.0},
                timeout=timeout,
                warm=False,
            )
        )
    records, elapsed = asyncio.run(
        run_load(
            target,
            prompts,
            concurrency=concurrency,
            requests=len(prompts),
            duration=math.inf,
            timeout=timeout,
            warm=False,
        )
    )
    return [(r["i"], r["code"], r["ms"], r.get("text", ""), r.get("deferred", False)) for r in records], elapsed


def router_shadow(ray_address: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "serving.ops.cli", "status", "--ray-address", ray_address, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return (json.loads(r.stdout.strip().splitlines()[-1]).get("router") or {}).get("shadow") or {}


def run_condition(cfg_raw: dict, rate: float, prompts: list[str], concurrency: int, samples: Path) -> dict:
    raw = json.loads(json.dumps(cfg_raw))
    raw["shadow"] = raw["shadow"] | ({"rate": rate, "path": str(samples)} if rate else {"rate": 0.0})
    with tempfile.TemporaryDirectory() as tmp, cascade_server(parse_config(raw), Path(tmp)) as srv:
        calls, elapsed = stream_once(srv.address, prompts, concurrency)
        shadow = {}
        if rate:  # let the last shadow calls finish (they run after the answers)
            shadow = wait_for(
                lambda: (
                    (s := router_shadow(srv.ray_address).get("weak"))
                    and s["running"] == 0
                    and s["completed"] + s["failed"] + s["dropped_busy"] + s["dropped_full"] == s["sampled"]
                    and s
                ),
                timeout=120,
                interval=1,
                what="the shadow calls to finish",
            )
    ok = [c for c in calls if c[1] == "OK"]
    lat = [c[2] for c in ok]
    return {
        "rate": rate,
        "requests": len(calls),
        "ok": len(ok),
        "elapsed_s": elapsed,
        "throughput_rps": len(ok) / elapsed,
        "latency_ms": {q: float(np.percentile(lat, int(q[1:]))) for q in ("p50", "p90", "p99")},
        "deferral_share": sum(c[4] for c in ok) / len(ok),
        "shadow": shadow,
        "answers": {c[0]: {"text": c[3], "deferred": c[4]} for c in ok},
        "latencies_ms": lat,
    }


def truth(cfg, rows: list[dict], answers: dict, cache: Path) -> dict:
    """The strong tier's answer to every accepted question (in-process, same engine, cached)."""
    strong = run_offline(cfg, rows, "exact_match", cache, tiers=[cfg.tier_names[-1]])[cfg.tier_names[-1]]
    acc = [i for i, a in answers.items() if not a["deferred"]]
    agree = [exact_match(answers[i]["text"], strong.texts[i]) for i in acc]
    weak_ok = [exact_match(answers[i]["text"], rows[i]["reference"]) for i in acc]
    strong_ok = [exact_match(strong.texts[i], rows[i]["reference"]) for i in acc]
    return {
        "accepted": len(acc),
        "agreement": float(np.mean(agree)),
        "quality_loss_vs_references": float(np.mean(np.subtract(strong_ok, weak_ok))),
        "weak_accuracy_on_accepted": float(np.mean(weak_ok)),
        "strong_accuracy_on_accepted": float(np.mean(strong_ok)),
        "cascade_accuracy": float(np.mean([exact_match(a["text"], rows[i]["reference"]) for i, a in answers.items()])),
        "strong_texts": strong.texts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="labelled questions in the stream")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--threshold", type=float, default=-1.0)
    ap.add_argument("--repeats", type=int, default=1, help="off/on pairs, alternating")
    ap.add_argument("--busy-inflight", type=int, help="shadow.busy_inflight (default: the config's)")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    ap.add_argument("--out", default="results/shadow.json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    rows = [{"prompt": e.prompt, "reference": e.reference} for e in examples(SPLIT_SEEDS["test"], args.n)]
    prompts = [r["prompt"] for r in rows]
    raw = one_replica(load_config(TOY_CONFIG).model_dump(mode="json", exclude_none=True))
    raw["deferral"]["threshold"] = args.threshold
    raw["shadow"] = {"busy_inflight": args.busy_inflight} if args.busy_inflight else {}
    cfg = parse_config(raw)
    samples = Path(args.out).resolve().with_name(Path(args.out).stem + "_samples.jsonl")  # absolute: the server's
    # config file lives in a temporary directory, and a relative shadow.path is relative to it
    samples.parent.mkdir(parents=True, exist_ok=True)
    runs = {"off": [], "on": []}
    for r in range(args.repeats):  # off, on, then on, off, ...: neither condition always goes first
        part = samples.with_suffix(f".{r}.jsonl")
        part.unlink(missing_ok=True)  # the log appends
        for cond in ("off", "on") if r % 2 == 0 else ("on", "off"):
            rate = args.rate if cond == "on" else 0.0
            runs[cond].append(run_condition(raw, rate, prompts, args.concurrency, part))
    # The estimate pools the "on" runs (each its own router replica since start); the truth is per run.
    on = runs["on"]
    completed = sum(x["shadow"]["completed"] for x in on)
    agreed = sum(x["shadow"]["agreed"] for x in on)
    est = {
        k: sum(x["shadow"][k] for x in on) for k in ("sampled", "completed", "dropped_busy", "dropped_full", "failed")
    }
    est["agreement"] = agreed / completed if completed else None
    est["interval"] = list(wilson(agreed, completed)) if completed else None
    truths = [truth(cfg, rows, x["answers"], Path(args.cache)) for x in on]
    lines = [
        s
        for r in range(args.repeats)
        if samples.with_suffix(f".{r}.jsonl").exists()
        for s in read_samples(samples.with_suffix(f".{r}.jsonl"))
    ]
    ref = {r["prompt"]: r["reference"] for r in rows}
    sample_loss = (
        float(
            np.mean(
                [
                    exact_match(s["reference"], ref[s["prompt"]]) - exact_match(s["answer"], ref[s["prompt"]])
                    for s in lines
                ]
            )
        )
        if lines
        else None
    )
    t = {
        "accepted": sum(x["accepted"] for x in truths),
        "agreement": float(np.average([x["agreement"] for x in truths], weights=[x["accepted"] for x in truths])),
        "quality_loss_vs_references": float(
            np.average([x["quality_loss_vs_references"] for x in truths], weights=[x["accepted"] for x in truths])
        ),
    }
    lo, hi = est["interval"] or (float("nan"), float("nan"))
    p50 = {k: float(np.median([x["latency_ms"]["p50"] for x in v])) for k, v in runs.items()}
    report = {
        "machine": f"{os.cpu_count()} CPUs (shared)",
        "n": args.n,
        "rate": args.rate,
        "concurrency": args.concurrency,
        "threshold": args.threshold,
        "repeats": args.repeats,
        "shadow_config": cfg.shadow.model_dump(),
        "estimate": est,
        "truth": t,
        "truth_agreement_in_interval": bool(lo <= t["agreement"] <= hi),
        "truth_loss_in_interval": bool(1 - hi <= t["quality_loss_vs_references"] <= 1 - lo),
        "sampled_pairs_loss_vs_references": sample_loss,
        "shadow_refs_equal_offline_strong": (
            sum(s["reference"] == truths[0]["strong_texts"][prompts.index(s["prompt"])] for s in lines),
            len(lines),
        ),
        "latency": {
            k: [{kk: x[kk] for kk in ("requests", "ok", "throughput_rps", "latency_ms", "deferral_share")} for x in v]
            for k, v in runs.items()
        },
        "p50_ms": p50,
        "p50_on_over_off": p50["on"] / p50["off"],
        "per_run_truth": [{k: v for k, v in x.items() if k != "strong_texts"} for x in truths],
    }
    print(
        f"stream: {args.n} labelled questions, threshold {args.threshold}, c={args.concurrency}, "
        f"shadow rate {args.rate} (busy_inflight {cfg.shadow.busy_inflight}, max_concurrent "
        f"{cfg.shadow.max_concurrent}), {args.repeats} off/on pair(s)"
    )
    print(f"{'':<34} {'agreement':>10} {'95% interval':>17} {'loss':>8}")
    if est["agreement"] is not None:
        print(
            f"{'shadow estimate (live)':<34} {est['agreement']:>10.3f}   [{lo:.3f}, {hi:.3f}] {1 - est['agreement']:>8.3f}"
        )
    print(f"{'truth: all accepted vs strong':<34} {t['agreement']:>10.3f} {'':>17} {1 - t['agreement']:>8.3f}")
    print(f"{'truth: loss vs references':<34} {'':>10} {'':>17} {t['quality_loss_vs_references']:>8.3f}")
    print(
        f"samples: {est['sampled']} sampled of {t['accepted']} accepted, {est['completed']} completed, dropped "
        f"{est['dropped_busy']} busy + {est['dropped_full']} full, {est['failed']} failed; truth in interval: "
        f"agreement {report['truth_agreement_in_interval']}, loss vs references {report['truth_loss_in_interval']}"
    )
    print(f"{'shadow':<8} {'rps':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'defer':>6}")
    for k, v in runs.items():
        for x in v:
            lat = x["latency_ms"]
            print(
                f"{k:<8} {x['throughput_rps']:>7.1f} {lat['p50']:>8.1f} {lat['p90']:>8.1f} {lat['p99']:>8.1f} "
                f"{x['deferral_share']:>6.3f}"
            )
    print(f"p50 on/off (median over pairs): {report['p50_on_over_off']:.3f}")
    write_json(report, args.out)
    if args.plot:
        plot(runs, est, t, args.plot)


def plot(runs: dict, est: dict, t: dict, path: str) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for k, v in runs.items():
        xs = np.sort(np.concatenate([x["latencies_ms"] for x in v]))
        a.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=f"shadow {k} (p50 {np.median(xs):.0f} ms)")
    a.set_xscale("log")
    a.set_xlabel("client latency (ms)")
    a.set_ylabel("fraction of requests")
    a.set_title("Client latency, shadow on vs off")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    if est["agreement"] is not None:
        lo, hi = est["interval"]
        b.errorbar(
            [0],
            [est["agreement"]],
            yerr=[[est["agreement"] - lo], [hi - est["agreement"]]],
            fmt="o",
            capsize=6,
            label=f"shadow estimate (n={est['completed']})",
        )
    b.plot([1], [t["agreement"]], "s", label=f"truth: all {t['accepted']} accepted vs strong")
    b.plot([2], [1 - t["quality_loss_vs_references"]], "^", label="1 - loss vs references")
    b.set_xticks([0, 1, 2], ["estimate", "agreement", "1 - loss"])
    b.set_ylabel("agreement of accepted answers")
    b.set_title("What the cascade gives up on accepted answers")
    b.legend(fontsize=7)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
