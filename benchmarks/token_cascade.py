"""Token-level (speculative) cascades against sequence cascades: quality against the strong tier's compute.

    python -m benchmarks.token_cascade --config serving/smol_pair/config.yaml \
        --val serving/smol_pair/data/val.jsonl --data serving/smol_pair/data/test.jsonl \
        --out results/token_cascade.json --plot results/token_cascade.png

In-process, through the production walk (``serving.core.walk.Cascade``) over the tiers' own servers
(``serving.serve.tier.InProcessTiers``: each tier's logic and engine, no Ray). Every request is run once per
mode with every request deferred (a per-request threshold above every score), the weak tier's whole answer
first (early deferral off); a sequence rule at threshold ``t`` then keeps the weak answer where the weak score
is >= t and the mode's answer elsewhere, so each mode's whole curve comes from one pass over the data:

- ``regenerate``: the strong tier's own answer (the split's reference: SmolLM2's greedy answer);
- ``verify``: the strong tier verifies the weak answer losslessly and decodes on (``on_defer: verify``);
- ``token:<rule>:<alpha>``: the token-level cascade (``deferral.token_rule``, blocks of ``--block``);
- ``token:exact``: the hybrid with the exact rule (lossless behind the sequence rule); ``speculative``: the same
  with every request deferred (lossless speculative decoding with the student as the draft, a point).

Strong compute per request: *passes* (sequential strong forward passes: a decoding step each, a verification
each; the latency a strong tier adds) and *positions* (token positions through the strong forward with a
prefix cache, as vLLM serves: prompt + answer for a regeneration; prompt + every draft token verified + one
per pass for the verifying modes; the FLOPs-equivalent). Quality both ways: agreement with SmolLM2's answer
and ground-truth correctness.

Each mode's operating point is picked on ``--val`` for a target (``--target-agreement``, and 95 % of
SmolLM2's correctness), the cheapest in strong positions that reaches it, then reported once on ``--data``.
Prints tables, writes JSON (and a PNG with --plot). Never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import pyplot, write_json
from serving.config import load_config, parse_config
from serving.core.request import CascadeRequest
from serving.core.walk import Cascade
from serving.serve.tier import InProcessTiers
from serving.tasks.short_answers import correct

ALWAYS = 1e9  # a per-request threshold above every score: the request is deferred


@dataclass
class Mode:
    name: str
    texts: list[str]
    passes: np.ndarray  # strong passes per request when deferred
    positions: np.ndarray  # strong token positions per request when deferred
    weak_tokens: np.ndarray  # weak tokens generated after the first answer (re-drafting)
    seconds: float = 0.0


def variant(raw: dict, token_rule: dict | None, on_defer: str) -> dict:
    raw = {**raw, "deferral": {**raw["deferral"], "on_defer": on_defer, "early_deferral": False}}
    raw["deferral"].pop("token_rule", None)
    if token_rule is not None:
        raw["deferral"]["token_rule"] = token_rule
    return raw


async def run_mode(tiers, raw: dict, rows: list[dict], threshold: float, concurrency: int):
    cfg = parse_config(raw)
    cascade = Cascade(cfg, tiers)
    sem = asyncio.Semaphore(concurrency)

    async def one(row):
        async with sem:
            req = CascadeRequest.build(
                prompt=row["prompt"], threshold=threshold, tier_names=cfg.tier_names, limits=cfg.limits
            )
            return await cascade.run(req)

    t0 = time.perf_counter()
    outs = await asyncio.gather(*(one(r) for r in rows))
    return outs, time.perf_counter() - t0


def strong_cost(out) -> tuple[int, int, int]:
    """(passes, positions, weak re-draft tokens) of one deferred request's outcome."""
    rc = out.receipt
    g = out.answer
    prompt = g.prompt_tokens
    if g.passes:  # token-level: every pass verifies its block and adds one token of its own
        positions = prompt + g.draft_tokens + g.passes
    elif g.draft_tokens:  # lossless verify: the draft verified, then one decoding step a token after the kept prefix
        positions = prompt + g.draft_tokens + max(g.completion_tokens - g.draft_accepted - 1, 0) + 1
    else:
        positions = prompt + g.completion_tokens
    weak_lines = [x for x in rc.lines if x.tier != rc.strong_tier]
    redraft = sum(x.completion_tokens for x in weak_lines[1:])
    return rc.strong_passes, positions, redraft


async def collect(cfg_path: str, rows: list[dict], alphas, rules, block: int, concurrency: int) -> dict:
    raw = load_config(cfg_path).model_dump(mode="json")
    cfg = parse_config(raw)
    tiers = await InProcessTiers.start(cfg)
    try:
        weak_outs, weak_s = await run_mode(tiers, variant(raw, None, "verify"), rows, -ALWAYS, concurrency)
        scores = np.array([o.score for o in weak_outs])
        weak = Mode(
            "weak",
            [o.answer.text for o in weak_outs],
            np.zeros(len(rows)),
            np.zeros(len(rows)),
            np.zeros(len(rows)),
            weak_s,
        )
        refs = [r["reference"] for r in rows]
        regen = Mode(
            "regenerate",
            refs,
            np.array([len(r["token_ids"]) for r in rows], float),
            np.array([r["prompt_tokens"] + len(r["token_ids"]) for r in rows], float),
            np.zeros(len(rows)),
        )
        modes = [regen]
        specs = [("verify", None)] + [
            (f"token:{r}:{a:g}", {"rule": r, "alpha": a, "block": block}) for r in rules for a in alphas
        ]
        specs.append(("speculative", {"rule": "exact", "block": block}))
        for name, rule in specs:
            outs, secs = await run_mode(tiers, variant(raw, rule, "verify"), rows, ALWAYS, concurrency)
            cost = np.array([strong_cost(o) for o in outs], float)
            modes.append(Mode(name, [o.answer.text for o in outs], cost[:, 0], cost[:, 1], cost[:, 2], secs))
            print(f"  {name:>16}: {secs:6.1f} s, {cost[:, 0].mean():.2f} strong passes / request", flush=True)
        return {"scores": scores, "weak": weak, "modes": modes}
    finally:
        tiers.close()


class Curve:
    """One mode's answers beside the weak tier's: its operating point at any sequence threshold."""

    def __init__(self, scores, weak: Mode, mode: Mode, rows):
        refs, truths = [r["reference"] for r in rows], [r["truth"] for r in rows]
        self.scores, self.mode = scores, mode
        self.w_agree = np.array([a == r for a, r in zip(weak.texts, refs)], float)
        self.m_agree = np.array([a == r for a, r in zip(mode.texts, refs)], float)
        self.w_ok = np.array([correct(a, t) for a, t in zip(weak.texts, truths)], float)
        self.m_ok = np.array([correct(a, t) for a, t in zip(mode.texts, truths)], float)

    def at(self, t: float | None) -> dict:
        d = self.scores < (np.inf if t is None else t)
        m = self.mode
        return {
            "threshold": t,
            "deferred": float(d.mean()),
            "agreement": float(np.where(d, self.m_agree, self.w_agree).mean()),
            "correct": float(np.where(d, self.m_ok, self.w_ok).mean()),
            "strong_passes": float((m.passes * d).mean()),
            "strong_positions": float((m.positions * d).mean()),
            "weak_redraft_tokens": float((m.weak_tokens * d).mean()),
        }

    def points(self) -> list[dict]:
        """Every distinct operating point: at each weak score (deferring what lies below it), and +inf."""
        return [self.at(float(t)) for t in sorted(set(self.scores.tolist()))] + [self.at(None)]


def pick(points: list[dict], metric: str, target: float):
    ok = [p for p in points if p[metric] >= target]
    return min(ok, key=lambda p: (p["strong_positions"], p["strong_passes"])) if ok else None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="serving/smol_pair/config.yaml")
    ap.add_argument("--val", default="serving/smol_pair/data/val.jsonl")
    ap.add_argument("--data", default="serving/smol_pair/data/test.jsonl")
    ap.add_argument("--limit", type=int, default=0, help="first N rows of each split (0: all)")
    ap.add_argument("--alphas", default="0,0.1,0.2,0.3,0.5")
    ap.add_argument("--rules", default="token,diff")
    ap.add_argument("--block", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--target-agreement", type=float, default=0.95)
    ap.add_argument("--target-correct", type=float, default=0.95, help="share of SmolLM2's own correctness")
    ap.add_argument("--out", default="results/token_cascade.json")
    ap.add_argument("--plot")
    a = ap.parse_args(argv)
    alphas = [float(x) for x in a.alphas.split(",")]
    rules = a.rules.split(",")
    report: dict = {"config": a.config, "block": a.block, "splits": {}}
    data = {}
    for split, path in (("val", a.val), ("test", a.data)):
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line]  # with token_ids
        rows = rows[: a.limit] if a.limit else rows
        print(f"{split}: {len(rows)} rows", flush=True)
        got = asyncio.run(collect(a.config, rows, alphas, rules, a.block, a.concurrency))
        curves = {m.name: Curve(got["scores"], got["weak"], m, rows) for m in got["modes"]}
        strong_ok = float(np.mean([correct(r["reference"], r["truth"]) for r in rows]))
        exact_spec = next(m for m in got["modes"] if m.name == "speculative")
        lossless = sum(t == r["reference"] for t, r in zip(exact_spec.texts, rows))
        data[split] = curves
        report["splits"][split] = {
            "rows": len(rows),
            "strong_correct": strong_ok,
            "speculative_equal_to_strong": lossless,
            "seconds": {m.name: round(m.seconds, 1) for m in got["modes"]},
            "curves": {name: c.points() for name, c in curves.items()},
        }
    # operating points: picked on val, reported on test
    strong_ok = report["splits"]["val"]["strong_correct"]
    targets = {"agreement": a.target_agreement, "correct": a.target_correct * strong_ok}
    table = []
    for metric, target in targets.items():
        for name, c in data["val"].items():
            # speculative: every request (a point), and as the hybrid's exact rule (token:exact) behind the sequence rule
            picks = [(name, pick(c.points(), metric, target))]
            if name == "speculative":
                picks = [("token:exact", picks[0][1]), ("speculative", {"threshold": None})]
            for label, chosen in picks:
                if chosen is None:
                    table.append({"target": metric, "mode": label, "reached_on_val": False})
                    continue
                point = data["test"][name].at(chosen["threshold"])
                table.append({"target": metric, "mode": label, "reached_on_val": True, **point})
    report["picked"] = table
    test_strong_ok = report["splits"]["test"]["strong_correct"]
    print(
        f"\nTest split, operating points picked on val (targets: agreement {a.target_agreement}, correctness "
        f"{a.target_correct:.0%} of SmolLM2's {strong_ok:.3f} on val; SmolLM2 on test: {test_strong_ok:.3f})"
    )
    print(
        f"{'target':>9} {'mode':>16} {'deferred':>8} {'agree':>6} {'correct':>7} {'passes':>7} {'positions':>9} {'redraft':>7}"
    )
    for r in table:
        if not r["reached_on_val"]:
            print(f"{r['target']:>9} {r['mode']:>16}   (target not reached on val)")
            continue
        print(
            f"{r['target']:>9} {r['mode']:>16} {r['deferred']:8.3f} {r['agreement']:6.3f} {r['correct']:7.3f} "
            f"{r['strong_passes']:7.2f} {r['strong_positions']:9.1f} {r['weak_redraft_tokens']:7.2f}"
        )
    print(
        f"\nlossless speculative (exact rule, every request): {report['splits']['test']['speculative_equal_to_strong']}"
        f" of {report['splits']['test']['rows']} test answers equal SmolLM2's own"
    )
    write_json(report, a.out)
    if a.plot:
        plot(report, a.plot)


def plot(report: dict, path: str) -> None:
    """Quality on the test split against the strong tier's passes (left) and token positions (right)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    curves = report["splits"]["test"]["curves"]
    for row, metric in zip(axes, ("agreement", "correct")):
        for ax, cost in zip(row, ("strong_passes", "strong_positions")):
            for name, points in curves.items():
                if name == "speculative":
                    p = points[-1]
                    ax.plot([p[cost]], [p[metric]], "k*", ms=10, label="speculative (every request)")
                    name = "token:exact (hybrid)"
                style = "-" if name in ("regenerate", "verify") or "exact" in name else "--"
                ax.plot([p[cost] for p in points], [p[metric] for p in points], style, lw=1.2, label=name)
            ax.set_xlabel(
                "strong passes per request" if cost == "strong_passes" else "strong token positions per request"
            )
            ax.set_ylabel(f"{metric} (test)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Token-level vs sequence cascades on the SmolLM2 pair: quality against the strong tier's compute")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
