"""Shadow samples as labelled data (``cascade calibrate --shadow``): the JSONL that shadow sampling
(``serving.observability.shadow``) writes, read back as offline tier runs."""

from __future__ import annotations

import json
from pathlib import Path

from serving.evaluation.quality import get_metric

FORMAT = "cascade-shadow/1"  # what serving.observability.shadow writes


def read_samples(path: str | Path) -> list[dict]:
    """The samples of a shadow JSONL file (ValueError names the line that is not one); a torn last line (its
    writer was killed mid-write; the next append cuts it off) is skipped."""
    from serving.evaluation.data import read_jsonl

    return read_jsonl(
        path,
        f"not a shadow sample (format {FORMAT!r}; written by shadow.path)",
        lambda r: r.get("format") == FORMAT,
        "shadow samples",
        torn_tail_ok=True,
    )


def shadow_runs(path: str | Path, metric: str, tier: str, next_tier: str):
    """Labelled runs for calibration from a shadow file's samples of the boundary ``tier -> next_tier``:
    the accepted answers with their recorded log-probs (and embeddings, when the router recorded them),
    the next tier's answers as references. Returns (rows for hashing, {tier: OfflineTierRun, next_tier: OfflineTierRun})."""
    import numpy as np

    from serving.evaluation.offline import OfflineTierRun

    score = get_metric(metric)
    samples = [s for s in read_samples(path) if s["tier"] == tier and s["next_tier"] == next_tier]
    if not samples:
        raise ValueError(f"{path}: no shadow samples of the boundary {tier} -> {next_tier}")
    refs = [s["reference"] for s in samples]
    embeddings = [s.get("embedding") for s in samples]
    emb = (
        np.asarray(embeddings, dtype=np.float64)
        if all(e is not None for e in embeddings)
        else np.zeros((len(samples), 0))
    )
    weak = OfflineTierRun(
        tier,
        [s["answer"] for s in samples],
        [s["logprobs"] for s in samples],
        emb,
        np.array([score(s["answer"], r) for s, r in zip(samples, refs)]),
    )
    strong = OfflineTierRun(
        next_tier, refs, [[] for _ in samples], np.zeros((len(samples), 0)), np.array([score(r, r) for r in refs])
    )
    rows = [{"prompt": s["prompt"] or json.dumps(s["messages"]), "reference": r} for s, r in zip(samples, refs)]
    return rows, {tier: weak, next_tier: strong}
