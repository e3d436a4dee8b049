"""The strong model's own answers to the prompt family (``serving/tasks/short_answers.py``): the training
data of the student and the reference of the pair's quality ("agrees with strong-only").

    python -m serving.smol_pair.answers                 # every split, into serving/smol_pair/data/<split>.jsonl
    python -m serving.smol_pair.answers --split test --threads 2
    python -m serving.smol_pair.answers --split heldout      # the held-out-phrasing split

SmolLM2 runs through the server's own engine for the strong tier of ``serving/smol_pair/config.yaml``
(the continuous-batching engine, greedy, ``max_new_tokens`` of that tier), all prompts of a chunk at
once, so the answers are the ones the strong tier serves. Each row keeps the prompt, the task, the ground
truth, the strong text (`reference`), its token ids (end-of-sequence included when emitted) and the finish reason. A
split whose file exists is skipped (the files are shipped: regenerate with ``--force``).
"""

from __future__ import annotations

import argparse
import json
import time

from tqdm import tqdm

from serving.smol_pair import CONFIG, HERE
from serving.tasks.short_answers import SPLITS, correct, split

NAMES = [*SPLITS, "heldout"]  # heldout: the same tasks in phrasings nothing trains or tunes on

DATA = HERE / "data"


def load_split(name: str) -> list[dict]:
    """The shipped rows of a split (see the module docstring)."""
    path = DATA / f"{name}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: run python -m serving.smol_pair.answers --split {name}")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def strong_tier(threads: int):
    from serving.config import load_config

    cfg = load_config(CONFIG)
    tier = cfg.tiers[-1]
    return tier.model_copy(update={"model": tier.model.model_copy(update={"torch_threads": threads})})


def generate(name: str, threads: int = 2, chunk: int = 256) -> float:
    from serving.core.types import GenerationRequest
    from serving.engines import build_engine

    questions = split(name)
    engine = build_engine(strong_tier(threads))
    start, rows = time.perf_counter(), []
    try:
        for i in tqdm(range(0, len(questions), chunk), desc=f"SmolLM2 answers ({name})", unit="chunk of 256"):
            part = questions[i : i + chunk]
            gens = engine.generate_many([GenerationRequest(prompt=q.prompt) for q in part])
            for q, g in zip(part, gens):
                rows.append(
                    {
                        "task": q.task,
                        "prompt": q.prompt,
                        "truth": q.truth,
                        "reference": g.text,  # the strong answer: what agreement is measured against
                        "token_ids": g.token_ids,
                        "finish_reason": g.finish_reason,
                        "prompt_tokens": g.prompt_tokens,
                        "correct": correct(g.text, q.truth),
                    }
                )
    finally:
        engine.close()
    seconds = time.perf_counter() - start
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = DATA / f"{name}.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(DATA / f"{name}.jsonl")
    return seconds


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=NAMES, action="append")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for SmolLM2")
    ap.add_argument("--force", action="store_true", help="regenerate a split whose file exists")
    args = ap.parse_args(argv)
    for name in args.split or NAMES:
        if (DATA / f"{name}.jsonl").exists() and not args.force:
            print(f"{name}: {DATA / name}.jsonl exists (--force regenerates)")
            continue
        seconds = generate(name, args.threads)
        rows = load_split(name)
        tokens = sum(len(r["token_ids"]) for r in rows)
        print(
            f"{name}: {len(rows)} answers, {tokens} tokens in {seconds:.0f} s ({tokens / seconds:.0f} tokens/s); "
            f"ground truth met {sum(r['correct'] for r in rows) / len(rows):.3f}"
        )


if __name__ == "__main__":
    main()
