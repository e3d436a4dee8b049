"""``cascade bench``: load-test a deployed cascade, or any OpenAI-compatible server, from the command line.

    cascade bench 127.0.0.1:9000 --concurrency 8 --duration 20                     # gRPC Generate, closed loop
    cascade bench grpc://127.0.0.1:9000 --stream --rate 5 --duration 30             # GenerateStream, Poisson arrivals
    cascade bench http://127.0.0.1:8000 --api chat --stream --requests 200 --mix cascade=0.8,strong=0.2
    cascade bench http://127.0.0.1:8000 --peer http://127.0.0.1:8001 --peer-model my-model --rounds 3

Closed loop (``--concurrency`` callers back to back) or open loop (``--rate`` Poisson arrivals, or ``--steps``),
bounded by ``--duration`` and/or ``--requests``. ``--mix`` sends a share of the requests forcing a tier (gRPC
``force_tier``; HTTP model ``<model>:<tier>``), a field only a cascade has. ``--peer`` runs the same load against
a second endpoint (vLLM's own server, another build of ours), alternating A and B round by round (AB, BA, AB…,
so drift on a noisy machine does not favour one side) and reports each side's median over the rounds and B/A.
Prints a table (rps, TTFT and latency p50/p99, errors by status); ``--out`` writes JSON, ``--plot`` a PNG
(matplotlib: ``pip install 'cascade-serving[bench]'``). Never asserts timings: it measures."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from serving.ops.loadgen import (
    CASCADE,
    Target,
    arrivals,
    parse_mix,
    parse_steps,
    parse_target,
    run_load,
    step_arrivals,
    summarize,
)

# what the table, the medians and the ratios report: (label, path into a summary)
HEADLINE = (
    ("rps", ("throughput_rps",)),
    ("TTFT p50", ("ttft_ms", "p50")),
    ("TTFT p99", ("ttft_ms", "p99")),
    ("p50 ms", ("latency_ms", "p50")),
    ("p99 ms", ("latency_ms", "p99")),
)


def _get(summary: dict, path: tuple[str, ...]) -> float:
    for k in path:
        summary = summary[k]
    return float(summary)  # type: ignore[arg-type]


# ---- pure parts: order of rounds, medians, ratios, the table ----------------------------------------------
def round_order(rounds: int, sides: tuple[str, ...] = ("A", "B")) -> list[tuple[int, str]]:
    """(round, side) in the order they run: AB, BA, AB, … (one side alone: A, A, …)."""
    out = []
    for r in range(rounds):
        order = sides if r % 2 == 0 else tuple(reversed(sides))
        out += [(r, s) for s in order]
    return out


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def medians(summaries: list[dict]) -> dict[str, Any]:
    """One side's headline numbers: the median over its rounds; requests, ok and errors summed."""
    errors: dict[str, int] = {}
    for s in summaries:
        for code, n in s["errors"].items():
            errors[code] = errors.get(code, 0) + n
    return {
        "rounds": len(summaries),
        "requests": sum(s["requests"] for s in summaries),
        "ok": sum(s["ok"] for s in summaries),
        "errors": errors,
        **{label: _median([_get(s, path) for s in summaries]) for label, path in HEADLINE},
    }


def ratios(a: dict, b: dict) -> dict[str, float]:
    """B over A for each headline number (nan where A's is 0 or missing)."""
    return {
        label: (b[label] / a[label] if a[label] and not math.isnan(a[label]) else float("nan")) for label, _ in HEADLINE
    }


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}:{v}" for k, v in sorted(errors.items())) or "-"


def table(rows: list[tuple[str, dict]]) -> str:
    """A plain-text table: one row per (name, numbers) with requests, ok, the headline numbers and errors by
    status; a ratio row (no requests) shows ratios."""
    head = f"{'':<16} {'req':>6} {'ok':>6} " + " ".join(f"{label:>9}" for label, _ in HEADLINE) + "  errors"
    lines = [head]
    for name, r in rows:
        counts = f"{r['requests']:>6} {r['ok']:>6}" if "requests" in r else f"{'':>6} {'':>6}"
        nums = " ".join(f"{_fmt(r[label]):>9}" for label, _ in HEADLINE)
        lines.append(f"{name:<16} {counts} {nums}  {_errors(r['errors']) if 'errors' in r else ''}".rstrip())
    return "\n".join(lines)


def headline(summary: dict) -> dict[str, Any]:
    """A single round's row for :func:`table`."""
    return {
        "requests": summary["requests"],
        "ok": summary["ok"],
        "errors": summary["errors"],
        **{label: _get(summary, path) for label, path in HEADLINE},
    }


# ---- the command ------------------------------------------------------------------------------------------------
def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help="load-test a cascade (gRPC or OpenAI HTTP) or any OpenAI server; optionally side by side with a peer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", help="grpc://host:port (or host:port) for our gRPC API; http://host:port[/v1] for OpenAI")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, help="closed loop: this many requests in flight (default 4)")
    load.add_argument("--rate", type=float, help="open loop: Poisson arrivals at this many requests/s")
    load.add_argument("--steps", help="open loop in steps of Poisson arrivals: 'rate:seconds,rate:seconds,...'")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per run (default 20)")
    p.add_argument("--requests", type=int, help="closed loop: stop after this many requests (with --duration: first)")
    p.add_argument("--api", choices=["chat", "completions"], default="chat", help="HTTP: the OpenAI endpoint")
    p.add_argument("--stream", action="store_true", help="gRPC GenerateStream / HTTP stream=true (TTFT measured)")
    p.add_argument("--model", default=CASCADE, help="HTTP: the model name to ask for (default: cascade)")
    p.add_argument("--max-tokens", type=int, default=0, help="max new tokens per request (default: the server's)")
    p.add_argument("--extra", help="HTTP: more body fields as a JSON object, e.g. '{\"temperature\": 0}'")
    p.add_argument("--threshold", type=float, help="the cascade's per-request deferral threshold (default: its own)")
    p.add_argument("--mix", default=CASCADE, help="share of requests per mode: cascade=0.8,strong=0.2 (a tier forced)")
    p.add_argument("--prompts", help="JSONL file with a 'prompt' per line (default: the arithmetic test split)")
    p.add_argument("--peer", help="a second endpoint to run the same load against, side by side (B)")
    p.add_argument("--peer-model", help="HTTP: the peer's model name (default: --model)")
    p.add_argument("--peer-mix", help="the peer's mix (default: --mix; a server that is not a cascade takes 'cascade')")
    p.add_argument("--rounds", type=int, help="rounds per side (default: 3 with --peer, else 1)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request deadline in seconds")
    p.add_argument("--token", help="bearer token for both endpoints (default: $CASCADE_TOKEN)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    p.add_argument("--no-warm", action="store_true", help="no unrecorded warm-up call before each run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway when not a terminal)")
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--plot", help="write a PNG here: latency and TTFT CDFs, answers per second (needs matplotlib)")
    p.set_defaults(func=cmd_bench)
    return p


def _prompts(path: Optional[str]) -> list[str]:
    if path:
        try:
            rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"--prompts: {path} is not JSONL: {e}") from None
        if not all(isinstance(r, dict) and isinstance(r.get("prompt"), str) for r in rows):
            raise ValueError(f"--prompts: every line of {path} must be a JSON object with a 'prompt' string")
        texts = [r["prompt"] for r in rows]
        if not texts:
            raise ValueError(f"--prompts: no rows in {path}")
        return texts
    from serving.evaluation.data import SPLIT_SEEDS
    from serving.tasks.arithmetic import examples

    return [e.prompt for e in examples(SPLIT_SEEDS["test"], 1000)]


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    """Everything a run needs, validated before any load is sent (bad input: ValueError naming the option)."""
    if args.concurrency is not None and args.concurrency < 1:
        raise ValueError(f"--concurrency: at least 1; got {args.concurrency}")
    if args.requests is not None and args.requests < 1:
        raise ValueError(f"--requests: at least 1; got {args.requests}")
    if args.rounds is not None and args.rounds < 1:
        raise ValueError(f"--rounds: at least 1; got {args.rounds}")
    if args.duration <= 0:
        raise ValueError(f"--duration: positive seconds; got {args.duration}")
    if args.max_tokens < 0:
        raise ValueError(f"--max-tokens: 0 (the server's default) or more; got {args.max_tokens}")
    if args.requests is not None and (args.rate is not None or args.steps):
        raise ValueError("--requests bounds a closed loop; an open loop is bounded by --duration or --steps")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install 'cascade-serving[bench]'") from None
    try:
        extra = json.loads(args.extra) if args.extra else None
    except json.JSONDecodeError as e:
        raise ValueError(f"--extra: not JSON: {e}") from None
    if extra is not None and not isinstance(extra, dict):
        raise ValueError("--extra: a JSON object of body fields")
    token = args.token if args.token is not None else os.environ.get("CASCADE_TOKEN")
    opts = dict(api=args.api, stream=args.stream, max_tokens=args.max_tokens, token=token, threshold=args.threshold)
    sides = {"A": (parse_target(args.target, model=args.model, **opts), parse_mix(args.mix))}
    if args.peer:
        peer = parse_target(args.peer, model=args.peer_model or args.model, **opts)
        sides["B"] = (peer, parse_mix(args.peer_mix or args.mix))
    if any(t.protocol == "grpc" for t, _ in sides.values()) and extra:
        raise ValueError("--extra: HTTP body fields; a gRPC endpoint takes none")
    if args.steps:
        steps = parse_steps(args.steps)
        times, duration = step_arrivals(steps, args.seed), sum(s for _, s in steps)
    elif args.rate is not None:
        times, duration = arrivals(args.rate, args.duration, args.seed), args.duration
    else:
        times, duration = None, args.duration
    load = Load(times, args.concurrency or 4, duration, args.requests, args.timeout, not args.no_warm, extra)
    return {
        "sides": sides,
        "load": load,
        "rounds": args.rounds or (3 if args.peer else 1),
        "texts": _prompts(args.prompts),
    }


@dataclass(frozen=True)
class Load:
    """One run's load: open loop at ``times`` (arrival offsets, s), else a closed loop of ``concurrency`` callers
    for ``duration`` s or ``requests`` calls (the first reached)."""

    times: Optional[list[float]] = None
    concurrency: int = 4
    duration: float = 20.0
    requests: Optional[int] = None
    timeout: float = 60.0
    warm: bool = True
    extra: Optional[dict] = None  # more HTTP body fields

    def describe(self) -> dict[str, Any]:
        if self.times is not None:
            return {"open_loop_arrivals": len(self.times), "duration_s": self.duration}
        return {"concurrency": self.concurrency, "duration_s": self.duration, "requests": self.requests}


def run_once(
    target: Target, mix: dict[str, float], texts: list[str], load: Load, progress: Optional[str] = None
) -> tuple[dict, list[dict]]:
    """One run: its summary (:func:`serving.ops.loadgen.summarize`) and its records, trimmed for the report.
    ``progress``: a progress bar's title (off when not a terminal); None: no bar."""
    from tqdm import tqdm

    total = len(load.times) if load.times is not None else load.requests
    with tqdm(total=total, desc=progress, unit="req", file=sys.stderr, disable=None if progress else True) as bar:
        records, elapsed = asyncio.run(
            run_load(
                target,
                texts,
                times=load.times,
                concurrency=load.concurrency,
                duration=load.duration,
                requests=load.requests,
                mix=mix,
                timeout=load.timeout,
                warm=load.warm,
                extra=load.extra,
                on_record=lambda r: bar.update(1),
            )
        )
    samples = [
        {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k in SAMPLE_FIELDS} for r in records
    ]
    return summarize(records, elapsed), samples


SAMPLE_FIELDS = ("t", "i", "mode", "code", "ms", "ttft_ms", "tier", "deferred")


def side_by_side(
    sides: dict[str, tuple[Target, dict[str, float]]],
    texts: list[str],
    load: Load,
    rounds: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """The same load against each side (name -> (target, mix)), round by round in alternating order
    (:func:`round_order`): every round's summary, each side's medians, and with two sides the second's numbers
    over the first's (``ratio``)."""
    names = tuple(sides)
    runs: dict[str, list[dict]] = {s: [] for s in names}
    samples: dict[str, list[list[dict]]] = {s: [] for s in names}
    for rnd, side in round_order(rounds, names):
        target, mix = sides[side]
        title = f"{side} round {rnd + 1}/{rounds}" if progress else None
        summary, recs = run_once(target, mix, texts, load, title)
        runs[side].append(summary | {"round": rnd + 1})
        samples[side].append(recs)
    report: dict[str, Any] = {
        "targets": {s: sides[s][0].label for s in names},
        "mix": {s: sides[s][1] for s in names},
        "load": load.describe() | {"rounds": rounds, "order": [f"{s}{r + 1}" for r, s in round_order(rounds, names)]},
        "runs": runs,
        "median": {s: medians(runs[s]) for s in names},
        "samples": samples,
    }
    if len(names) == 2:
        a, b = names
        report["ratio"] = {"of": f"{b}/{a}", **ratios(report["median"][a], report["median"][b])}
    return report


def json_safe(x: Any) -> Any:
    """``x`` with every NaN or infinity as null: strict JSON (jq, browsers), where a number was not measured."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def report_table(report: dict) -> str:
    rows: list[tuple[str, dict]] = []
    for side, summaries in report["runs"].items():
        if len(summaries) > 1:
            rows += [(f"{side} round {s['round']}", headline(s)) for s in summaries]
    rows += [(f"{side} median" if report["load"]["rounds"] > 1 else side, m) for side, m in report["median"].items()]
    if "ratio" in report:
        rows.append((report["ratio"]["of"], report["ratio"]))
    names = "\n".join(f"{s}: {t}  (mix {report['mix'][s]})" for s, t in report["targets"].items())
    return names + "\n" + table(rows)


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for side, rounds in report["samples"].items():
        recs = [r for rnd in rounds for r in rnd if r["code"] == "OK"]
        for ax, key in ((axes[0], "ms"), (axes[1], "ttft_ms")):
            xs = np.sort([r[key] for r in recs if key in r])
            if len(xs):
                ax.plot(
                    xs, np.arange(1, len(xs) + 1) / len(xs), label=f"{side} (all rounds: p50 {np.median(xs):.0f} ms)"
                )
        first = [r for r in rounds[0] if r["code"] == "OK"]
        if first:
            done = np.array([r["t"] + r["ms"] / 1e3 for r in first])
            width = max(float(done.max()) / 30, 0.1)  # ~30 bins, at least 0.1 s: short runs show too
            edges = np.arange(0, done.max() + width, width)
            rate = np.histogram(done, edges)[0] / width
            axes[2].step(edges, np.append(rate, rate[-1]), where="post", label=f"{side} round 1")
    for ax, title in ((axes[0], "Latency CDF"), (axes[1], "Time to first text CDF")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of answers")
        ax.set_title(title)
    axes[2].set_xlabel("seconds into the run")
    axes[2].set_ylabel("answers per second")
    axes[2].set_title("Throughput")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(" vs ".join(f"{s}: {t}" for s, t in report["targets"].items()), fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        plan = _plan(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = side_by_side(plan["sides"], plan["texts"], plan["load"], plan["rounds"], progress=not args.no_progress)
    report["load"] |= {"stream": args.stream, "api": args.api, "max_tokens": args.max_tokens}
    print(report_table(report), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(json_safe(report), indent=1, allow_nan=False))
        print(f"wrote {args.out}", file=sys.stderr)
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    failed = sum(m["ok"] == 0 for m in report["median"].values())
    return 1 if failed else 0
