"""Teacher data at scale for the student: SmolLM2-135M-Instruct's greedy answers *and its top-k log-probs at
every answer position* for tens of thousands of prompts of the training pool
(``serving/tasks/short_answers.training_pool``: shipped and training-only phrasings, never a validation, test
or held-out prompt), generated with vLLM's engine (offline, batched) on the HF copy of SmolLM2
(``python -m serving.smol_pair.convert``).

    python -m serving.smol_pair.teacher                        # 20,000 prompts -> ~/.cache/cascade/smol_teacher/shard-*.jsonl

Cached and resumable: prompts go in shards of ``--shard`` (default 500); a shard whose file exists is kept,
so an interrupted run picks up at the next shard. Prompts are encoded as the server encodes a chat prompt
(the chat template rendered, no extra special tokens), greedy, ``max_new_tokens`` 32 as the pair's tiers.
Each row: task, prompt, truth, reference (the answer text), token_ids (end-of-turn included when emitted),
top (per answer position: the teacher's top-k token ids and log-probs, log-softmax of the raw logits),
finish_reason, correct.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from tqdm import tqdm

from serving.smol_pair.convert import DEFAULT as SMOLLM2_HF
from serving.tasks.short_answers import correct, training_pool

CACHE = Path.home() / ".cache" / "cascade" / "smol_teacher"
TOP_K = 8
MAX_NEW = 32


def shard_path(out: Path, i: int) -> Path:
    return out / f"shard-{i:04d}.jsonl"


def load(out: Path = CACHE, limit: int | None = None) -> list[dict]:
    """The cached teacher rows, shard by shard (the first ``limit`` rows)."""
    rows: list[dict] = []
    for path in sorted(out.glob("shard-*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line]
        if limit is not None and len(rows) >= limit:
            return rows[:limit]
    return rows


def _engine(model: Path, threads: int):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "all" if threads >= os.cpu_count() else f"0-{threads - 1}")
    from vllm import LLM

    return LLM(
        model=str(model),
        tokenizer=str(model),
        dtype="float32",
        seed=0,
        max_model_len=256,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        kv_cache_memory_bytes=2 << 30,
        enable_prefix_caching=True,  # every prompt shares the chat template's prefix
    )


def generate(n: int, out: Path = CACHE, shard: int = 500, threads: int = 2, model: Path = SMOLLM2_HF) -> dict:
    from vllm import SamplingParams, TokensPrompt

    from serving.smol_pair.train import encode_prompt, teacher_tokenizer

    questions = training_pool(n)
    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(0, n, shard) if not shard_path(out, i // shard).exists()]
    report = {"prompts": n, "shards": -(-n // shard), "generated_shards": len(todo), "seconds": 0.0}
    if not todo:
        return report
    tok = teacher_tokenizer()
    llm = _engine(model, threads)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, logprobs=TOP_K, seed=0)
    start = time.perf_counter()
    bar = tqdm(total=len(todo) * shard, desc="SmolLM2 teacher (vLLM)", unit="prompt")
    for i in todo:
        part = questions[i : i + shard]
        prompts = [TokensPrompt(prompt_token_ids=encode_prompt(tok, q.prompt)) for q in part]
        outs = llm.generate(prompts, params, use_tqdm=False)
        rows = []
        for q, o in zip(part, outs):
            c = o.outputs[0]
            top = [sorted(((t, lp.logprob) for t, lp in d.items()), key=lambda x: -x[1])[:TOP_K] for d in c.logprobs]
            text = tok.decode(c.token_ids, skip_special_tokens=True)
            rows.append(
                {
                    "task": q.task,
                    "prompt": q.prompt,
                    "truth": q.truth,
                    "reference": text,
                    "token_ids": list(c.token_ids),
                    "top": [[[t for t, _ in d], [round(lp, 4) for _, lp in d]] for d in top],
                    "finish_reason": c.finish_reason,
                    "correct": correct(text, q.truth),
                }
            )
        tmp = shard_path(out, i // shard).with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(shard_path(out, i // shard))
        bar.update(len(part))
    bar.close()
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=20000)
    ap.add_argument("--shard", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=CACHE)
    ap.add_argument("--model", type=Path, default=SMOLLM2_HF, help="SmolLM2's HF copy (serving.smol_pair.convert)")
    args = ap.parse_args(argv)
    if not (args.model / "config.json").exists():
        raise SystemExit(f"{args.model}: run python -m serving.smol_pair.convert first")
    r = generate(args.prompts, args.out, args.shard, args.threads, args.model)
    rows = load(args.out, args.prompts)
    tokens = sum(len(x["token_ids"]) for x in rows)
    print(
        f"{len(rows)} teacher answers ({tokens} tokens) in {args.out}; {r['generated_shards']} of {r['shards']} "
        f"shards generated now in {r['seconds']} s; ground truth met {sum(x['correct'] for x in rows) / len(rows):.3f}"
    )


if __name__ == "__main__":
    main()
