"""The serving path's own cost, measured with the peer's tool: ``vllm bench serve`` drives vLLM's OpenAI
server (the strong model alone) and our cascade's OpenAI front with the same prompts file and concurrency;
our gRPC front is driven by `cascade bench`'s generator (unary and streamed) on the same prompts; the same generator
measures HTTP unary on both servers. Every row also gets the CPU each process of its server burned per
request (read from /proc for the server's whole process tree: Serve's proxy, the Router, each tier, vLLM's
engine core, Ray's own daemons), so a gap is explained where it is spent.

    python -m benchmarks.serving_cost --out results/serving_cost.json                # c=16, 300 prompts
    python -m benchmarks.serving_cost --rounds 2 --rows vllm_sse,cascade_sse          # alternate A/B rows
    python -m benchmarks.serving_cost --profile results/flame                         # + py-spy flame graphs
    python -m benchmarks.serving_cost --answers results/answers.json --answers-n 1000 # texts and tiers only

Both servers stay up for the whole run and rows alternate round by round, so a noisy machine shows as
spread between rounds, not as a bias between servers; the table reports each row's median over rounds.
Loopback only, bounded by --num-prompts per row. Never asserts timings. ``--answers`` writes the text and
tier of the first N held-out test questions over gRPC and HTTP (greedy) for comparing two trees.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

from benchmarks.common import (
    add_config_args,
    base_config,
    cpu_delta,
    one_replica,
    peer_binding,
    prompts,
    pyplot,
    tree_cpu,
    use_config,
    vllm_server,
    with_env,
    with_settings,
)
from serving.config import PACKAGE_DIR, parse_config
from serving.ops.loadgen import parse_target, run_load
from serving.ops.local import cascade_server

ROWS = {  # name: (server, client, model)
    "vllm_sse": ("vllm", "vllm_bench", "strong"),
    "vllm_http_unary": ("vllm", "http_unary", "strong"),
    "cascade_sse": ("ours", "vllm_bench", "cascade"),
    "strong_sse": ("ours", "vllm_bench", "cascade:strong"),
    "cascade_http_unary": ("ours", "http_unary", "cascade"),
    "cascade_grpc_unary": ("ours", "grpc_unary", "cascade"),
    "cascade_grpc_stream": ("ours", "grpc_stream", "cascade"),
    # server B: the same config with --b-set (default server.ingress=proxy: Serve's HTTP/gRPC proxies in front of the
    # Router) and --b-env, up only when one of these rows is asked for (A/B of a serving option in one run)
    "cascade_sse_b": ("b", "vllm_bench", "cascade"),
    "strong_sse_b": ("b", "vllm_bench", "cascade:strong"),
    "cascade_http_unary_b": ("b", "http_unary", "cascade"),
    "cascade_grpc_unary_b": ("b", "grpc_unary", "cascade"),
    "cascade_grpc_stream_b": ("b", "grpc_stream", "cascade"),
}


# ---- clients --------------------------------------------------------------------------------------------------
def vllm_bench(base_url: str, model: str, tokenizer: str, dataset: Path, args, out_dir: Path) -> dict:
    """``vllm bench serve`` (in-process: the CPU build's ``vllm`` console script cannot find its own metadata)."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    p = FlexibleArgumentParser()
    add_cli_args(p)
    argv = ["--backend", "openai-chat", "--base-url", base_url, "--endpoint", "/v1/chat/completions"]
    argv += ["--model", model, "--tokenizer", tokenizer, "--dataset-name", "custom", "--dataset-path", str(dataset)]
    argv += ["--custom-output-len", str(args.output_len), "--skip-chat-template", "--disable-shuffle"]
    argv += ["--num-prompts", str(args.num_prompts), "--max-concurrency", str(args.concurrency)]
    argv += ["--temperature", "0", "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99"]
    argv += ["--save-result", "--result-dir", str(out_dir), "--result-filename", "bench.json", "--disable-tqdm"]
    main(p.parse_args(argv))
    r = json.loads((out_dir / "bench.json").read_text())
    return {
        "completed": r["completed"],
        "failed": r.get("failed", 0),
        "elapsed_s": r["duration"],
        "rps": r["request_throughput"],
        **{f"{m}_{q}_ms": r.get(f"{q}_{m}_ms") for m in ("ttft", "tpot", "itl", "e2el") for q in ("p50", "p99")},
        "completion_tokens_mean": statistics.fmean(r.get("output_lens") or [0]),
    }


def _pcts(xs: list[float], name: str) -> dict[str, Optional[float]]:
    import numpy as np

    return {f"{name}_{q}_ms": float(np.percentile(xs, int(q[1:]))) if xs else None for q in ("p50", "p99")}


def _closed_loop(target, texts: list[str], args, extra=None) -> tuple[dict, list[dict]]:
    """--num-prompts requests, --concurrency at a time, through `cascade bench`'s generator: counts and rate, and
    the records that succeeded."""
    records, elapsed = asyncio.run(
        run_load(
            target,
            texts,
            concurrency=args.concurrency,
            requests=args.num_prompts,
            duration=math.inf,
            timeout=60,
            warm=False,
            extra=extra,
        )
    )
    ok = [r for r in records if r["code"] == "OK"]
    return {"completed": len(ok), "failed": len(records) - len(ok), "elapsed_s": elapsed, "rps": len(ok) / elapsed}, ok


def http_unary(base_url: str, model: str, texts: list[str], args) -> dict:
    """The same client for both servers (`cascade bench`'s generator): non-streamed chat completions, closed
    loop of --num-prompts requests."""
    target = parse_target(base_url, model=model, max_tokens=args.output_len)
    return _closed_loop(target, texts, args, extra={"temperature": 0})[0]
    # (no TTFT: a unary answer's first byte is its last)


def grpc_load(address: str, texts: list[str], args, stream: bool) -> dict:
    """Our gRPC API through `cascade bench`'s generator, closed loop over the same prompts: Generate, or
    GenerateStream with the time to the first text message and between text messages."""
    target = parse_target(address, stream=stream, max_tokens=args.output_len)
    out, ok = _closed_loop(target, texts, args)
    out |= _pcts([r["ms"] for r in ok], "e2el")
    if stream:
        out |= _pcts([r["ttft_ms"] for r in ok], "ttft") | _pcts([g for r in ok for g in r["itl_ms"]], "itl")
    return out


def peer_shape(cfg) -> tuple:
    """(python, max_model_len, args) for the vLLM peer: where our strong tier runs on vLLM, the peer gets its
    context length and KV block size (the toy pair's default otherwise)."""
    import sys

    eng = cfg.tiers[-1].engine
    if eng.name != "vllm":
        return (sys.executable,)
    bs = (eng.engine_args or {}).get("block_size")
    return sys.executable, eng.max_model_len or 512, ("--block-size", str(bs)) if bs else ()


# ---- the run --------------------------------------------------------------------------------------------------
def run_row(name: str, servers: dict, dataset: Path, texts: list[str], args, tmp: Path) -> dict:
    server, client, model = ROWS[name]
    s = servers[server]
    before = tree_cpu(s["pid"])
    m = s.get("model", model)
    if client == "vllm_bench":
        r = vllm_bench(s["http"], m, s["tokenizer"], dataset, args, tmp / name)
    elif client == "http_unary":
        r = http_unary(s["http"], m, texts, args)
    else:
        r = grpc_load(s["grpc"], texts, args, stream=client == "grpc_stream")
    cpu = cpu_delta(before, tree_cpu(s["pid"]))
    n = max(r["completed"], 1)
    r["cpu_ms_per_request"] = {k: round(v * 1e3 / n, 3) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])}
    r["cpu_ms_per_request_total"] = round(sum(cpu.values()) * 1e3 / n, 3)
    return r


def idle_cpu(servers: dict, seconds: float) -> dict[str, dict[str, float]]:
    """Each server's CPU with nothing in flight, per process, in % of one core over ``seconds`` (all servers
    sampled over the same window: what a deployment burns before its first request)."""
    before = {name: tree_cpu(s["pid"]) for name, s in servers.items()}
    time.sleep(seconds)
    out = {}
    for name, s in servers.items():
        cpu = cpu_delta(before[name], tree_cpu(s["pid"]))
        out[name] = {k: round(100 * v / seconds, 2) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])}
        out[name]["total"] = round(sum(cpu.values()) * 100 / seconds, 2)
    return out


def idle_table(idle: dict) -> None:
    if not idle:
        return
    print(f"\nidle: % of one core (this box has {os.cpu_count()}), by process")
    for name, by in idle.items():
        parts = ", ".join(f"{k} {v:.2f}" for k, v in by.items() if k != "total" and v >= 0.05)
        print(f"  {name:6} total {by['total']:.2f}: {parts}")


def profile(servers: dict, rows: list[str], dataset: Path, texts: list[str], args, tmp: Path, out: Path) -> dict:
    """py-spy flame graphs (SVG) of every process of our server's tree while each row runs again."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(os.sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    made = {}
    for name in rows:
        if ROWS[name][0] == "vllm":
            continue
        pids = {
            pid: label
            for pid, (label, _) in tree_cpu(servers[ROWS[name][0]]["pid"]).items()
            if not label.startswith("Ray ")
        }
        spies = []
        for pid, label in pids.items():
            svg = out / f"{name}--{label.replace(' ', '_').replace('(', '').replace(')', '')}--{pid}.svg"
            cmd = [spy, "record", "-p", str(pid), "-r", "67", "-o", str(svg), "--nonblocking", "-f", "flamegraph"]
            spies.append((label, svg, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        time.sleep(1.0)
        run_row(name, servers, dataset, texts, args, tmp)
        for _, _, p in spies:
            p.send_signal(2)  # py-spy writes its graph on SIGINT
        for label, svg, p in spies:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
            if svg.exists():
                made.setdefault(name, {})[label] = str(svg)
    return made


def answers(grpc_address: str, http: str, texts: list[str], output_len: int) -> list[dict]:
    """Text and tier of each prompt over gRPC (Generate) and HTTP (non-streamed chat), greedy, 8 at a time."""
    got = {}
    for name, target in (
        ("grpc", parse_target(grpc_address, max_tokens=output_len)),
        ("http", parse_target(http, max_tokens=output_len)),
    ):
        records, _ = asyncio.run(
            run_load(target, texts, concurrency=8, requests=len(texts), duration=math.inf, timeout=120, warm=False)
        )
        bad = [r["code"] for r in records if r["code"] != "OK"]
        if bad:
            raise RuntimeError(f"answers over {name}: {len(bad)} failed ({sorted(set(bad))})")
        got[name] = {r["i"]: [r["text"], r["tier"], r["deferred"]] for r in records}
    return [{"prompt": p, "grpc": got["grpc"][i], "http": got["http"][i]} for i, p in enumerate(texts)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(ap)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--num-prompts", type=int, default=300, help="requests per row (held-out test prompts)")
    ap.add_argument("--output-len", type=int, default=12, help="max_tokens (answers end at EOS: natural lengths)")
    ap.add_argument("--rounds", type=int, default=1, help="rows alternate round by round; medians reported")
    ap.add_argument("--strong", default=str(PACKAGE_DIR / "default_models" / "strong"), help="vLLM peer's model")
    ap.add_argument("--profile", metavar="DIR", help="also record py-spy flame graphs of our processes per row")
    ap.add_argument(
        "--idle", type=float, default=0, help="first, each server's CPU for this many s with nothing in flight"
    )
    ap.add_argument("--answers", metavar="FILE", help="only write texts and tiers of --answers-n test questions")
    ap.add_argument("--answers-n", type=int, default=1000)
    ap.add_argument("--set", default="", help="our server's config: dotted.key=value,... (as --b-set)")
    ap.add_argument(
        "--b-set",
        default="server.ingress=proxy",
        help="server B's config: dotted.key=value,... (YAML values), e.g. router.colocate_with=weak",
    )
    ap.add_argument(
        "--b-env",
        default="",
        help="server B's extra environment: K=V,K=V (Serve's settings); with --idle, B is up for it",
    )
    ap.add_argument("--out", default="results/serving_cost.json")
    args = ap.parse_args()
    use_config(args.config)
    rows = [r for r in args.rows.split(",") if r]
    if bad := [r for r in rows if r not in ROWS]:
        ap.error(f"--rows: unknown {bad}; choose from {list(ROWS)}")
    cfg = with_settings(parse_config(one_replica(base_config().model_dump(mode="json", exclude_none=True))), args.set)
    texts = prompts(args.data, max(args.num_prompts, args.answers_n if args.answers else 0))
    tokenizer = str(cfg.tiers[-1].model.source)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if args.answers:
            with cascade_server(cfg, tmp / "srv") as srv:
                got = answers(srv.address, srv.http_url.removesuffix("/v1"), texts, args.output_len)
            Path(args.answers).parent.mkdir(parents=True, exist_ok=True)
            Path(args.answers).write_text(json.dumps(got, indent=0))
            same = sum(a["grpc"] == a["http"] for a in got)
            print(f"{len(got)} answers -> {args.answers}; gRPC and HTTP agree on {same}")
            return
        dataset = tmp / "prompts.jsonl"
        dataset.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in texts[: args.num_prompts]))
        servers: dict = {}
        need_peer = any(ROWS[r][0] == "vllm" for r in rows)
        peer = (
            with_env(peer_binding(cfg), vllm_server, args.strong, *peer_shape(cfg))
            if need_peer
            else contextlib.nullcontext()
        )
        b_cfg = with_settings(cfg, args.b_set)
        b = (
            with_env(args.b_env, cascade_server, b_cfg, tmp / "b")
            if any(ROWS[r][0] == "b" for r in rows) or (args.idle and args.b_env)
            else None
        )
        with cascade_server(cfg, tmp / "srv") as srv, b or contextlib.nullcontext() as bsrv, peer as vllm:
            servers["ours"] = {"pid": srv.pid, "http": srv.http_url.removesuffix("/v1"), "grpc": srv.address}
            servers["ours"]["tokenizer"] = tokenizer
            if bsrv:
                servers["b"] = {"pid": bsrv.pid, "http": bsrv.http_url.removesuffix("/v1"), "grpc": bsrv.address}
                servers["b"]["tokenizer"] = tokenizer
            if need_peer:
                servers["vllm"] = {"pid": vllm.pid, "http": vllm.url, "model": args.strong, "tokenizer": args.strong}
            idle = idle_cpu(servers, args.idle) if args.idle else {}
            results = defaultdict(list)
            for rnd in range(args.rounds):
                order = rows if rnd % 2 == 0 else rows[::-1]
                for name in order:
                    r = run_row(name, servers, dataset, texts, args, tmp)
                    print(f"round {rnd} {name}: {r['rps']:.1f} rps, {r['cpu_ms_per_request_total']:.1f} CPU ms/req")
                    results[name].append(r)
            flames = profile(servers, rows, dataset, texts, args, tmp, Path(args.profile)) if args.profile else {}
    report = {"args": vars(args), "idle": idle, "rows": {k: summarize(v) for k, v in results.items()}, "runs": results}
    report["flame_graphs"] = flames
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    idle_table(idle)
    if report["rows"]:
        table(report["rows"])
        plot(report["rows"], Path(args.out).with_suffix(".png"))


def summarize(runs: list[dict]) -> dict:
    """Each figure's median over the rounds (CPU per request per process too)."""
    out = {}
    for k in runs[0]:
        vals = [r[k] for r in runs if r.get(k) is not None]
        if k == "cpu_ms_per_request":
            labels = {lab for r in vals for lab in r}
            out[k] = {lab: statistics.median(r.get(lab, 0.0) for r in vals) for lab in labels}
        elif vals and all(isinstance(v, (int, float)) for v in vals):
            out[k] = statistics.median(vals)
        else:
            out[k] = None
    out["rounds"] = len(runs)
    return out


def table(rows: dict) -> None:
    peer = rows.get("vllm_sse", {}).get("rps")
    print(
        f"\n{'row':22} {'rps':>7} {'×vLLM':>6} {'TTFT p50':>9} {'p99':>7} {'TPOT p50':>9} {'e2e p50':>8} {'CPU ms/req':>10}"
    )
    for name, r in rows.items():
        ratio = f"{r['rps'] / peer:.2f}" if peer else "-"
        f = lambda k, r=r: f"{r[k]:.1f}" if r.get(k) is not None else "-"  # noqa: E731
        print(
            f"{name:22} {r['rps']:7.1f} {ratio:>6} {f('ttft_p50_ms'):>9} {f('ttft_p99_ms'):>7} "
            f"{f('tpot_p50_ms'):>9} {f('e2el_p50_ms'):>8} {r['cpu_ms_per_request_total']:10.1f}"
        )
    print("\nCPU ms per request by process (median over rounds):")
    for name, r in rows.items():
        parts = sorted(r["cpu_ms_per_request"].items(), key=lambda kv: -kv[1])
        print(f"  {name:22} " + ", ".join(f"{k} {v:.1f}" for k, v in parts if v >= 0.05))


def plot(rows: dict, path: Path) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    names = list(rows)
    a.bar(names, [rows[n]["rps"] for n in names], color=["#888" if n.startswith("vllm") else "#369" for n in names])
    a.set_ylabel("requests / s")
    a.set_title("throughput (same prompts, same concurrency)")
    a.tick_params(axis="x", rotation=35)
    labels = sorted({lab for n in names for lab in rows[n]["cpu_ms_per_request"]})
    bottom = [0.0] * len(names)
    for lab in labels:
        vals = [rows[n]["cpu_ms_per_request"].get(lab, 0.0) for n in names]
        b.bar(names, vals, bottom=bottom, label=lab)
        bottom = [x + y for x, y in zip(bottom, vals)]
    b.set_ylabel("CPU ms per request")
    b.set_title("where the CPU goes, per process")
    b.tick_params(axis="x", rotation=35)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot -> {path}")


if __name__ == "__main__":
    main()
