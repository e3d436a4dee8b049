"""Labelled sets: JSONL, one {"prompt": ..., "reference": ...} a line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from serving.tasks.arithmetic import examples

# Fixed seeds of the arithmetic task's splits (1 is the validation set training stops on).
SPLIT_SEEDS = {"train": 4, "calibration": 2, "test": 3}


def read_jsonl(path: str | Path, expect: str, ok, what: str = "examples", torn_tail_ok: bool = False) -> list[dict]:
    """The non-blank lines of a JSONL file as dicts; ValueError names the first line that is not JSON or
    that ``ok(row)`` refuses (with the message ``expect``), or the file when it holds none.
    ``torn_tail_ok``: a last line with no newline that is not JSON (a writer killed mid-line) is skipped."""
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if torn_tail_ok and not line.endswith("\n"):
                    break  # only the last line can lack its newline
                raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not ok(row):
                raise ValueError(f"{path}:{i}: {expect}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no {what}")
    return rows


def load_jsonl(path: str | Path) -> list[dict]:
    rows = read_jsonl(
        path,
        'expected {"prompt": str, "reference": ...}',
        lambda r: isinstance(r.get("prompt"), str) and "reference" in r,
    )
    # the ground truth, where a row has one, for the ``correct`` metric (serving.evaluation.quality)
    return [
        {"prompt": r["prompt"], "reference": str(r["reference"])} | ({"truth": str(r["truth"])} if "truth" in r else {})
        for r in rows
    ]


def data_hash(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["prompt"], r["reference"]]).encode())
    return h.hexdigest()


def write_arithmetic_splits(out_dir: str | Path, sizes: dict[str, int]) -> dict[str, Path]:
    """Write train / calibration / test JSONL splits of the arithmetic task with fixed seeds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in sizes.items():
        path = out / f"arithmetic_{split}.jsonl"
        with open(path, "w") as f:
            for e in examples(SPLIT_SEEDS[split], n):
                f.write(json.dumps({"prompt": e.prompt, "reference": e.reference}) + "\n")
        paths[split] = path
    return paths
