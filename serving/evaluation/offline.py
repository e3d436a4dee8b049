"""Run every tier over a labelled set in-process, through the server's own engine, with a cache.

Per example and tier the cache keeps the output text, token log-probs, the answer embedding (final
hidden state mean-pooled over generated tokens) and length; correctness is computed from the text
with the chosen metric. A rerun with the same model files, generation settings and data reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from serving.config import CascadeConfig, Tier
from serving.core.decoding import Decoding
from serving.evaluation.data import data_hash
from serving.evaluation.quality import offline_metric

DEFAULT_CACHE = Path(os.environ.get("CASCADE_CACHE", Path.home() / ".cache" / "cascade" / "offline"))


@dataclass
class OfflineTierRun:
    tier: str
    texts: list[str]
    logprobs: list[list[float]]
    embeddings: np.ndarray  # (n, hidden)
    quality: np.ndarray  # (n,) per-example metric value

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(lp) for lp in self.logprobs])

    def prefix(self, k: Optional[int]) -> OfflineTierRun:
        """The run as a k-token decision window sees it: each answer's first k token log-probs."""
        if k is None:
            return self
        return OfflineTierRun(self.tier, self.texts, [lp[:k] for lp in self.logprobs], self.embeddings, self.quality)


def model_fingerprint(tier: Tier) -> str:
    """Identifies the weights (file names, sizes and mtimes for a local source; id + revision for a hub
    id), the generation settings and the engine (log-probs differ between engines by float noise)."""
    src = Path(tier.model.source)
    parts = [
        tier.model.model_dump_json(exclude={"torch_threads", "device"}),
        tier.generation.model_dump_json(),
        f"engine:{tier.engine.name}",
    ]
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else []
    parts += [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def run_tier(
    tier: Tier, rows: list[dict], cache_dir: Path = DEFAULT_CACHE, batch: int = 64, decoding: Optional[Decoding] = None
) -> dict:
    """The tier's answers to ``rows`` with ``decoding`` (default: greedy; a seeded one uses seed + row index, so
    a sampled run is reproducible), cached by model, data and decoding."""
    decoding = decoding or Decoding()
    tag = "" if decoding == Decoding() else json.dumps(asdict(decoding), sort_keys=True)
    key = hashlib.sha256((model_fingerprint(tier) + data_hash(rows) + tag).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"{tier.name}-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    from serving.core.types import GenerationRequest
    from serving.engines import build_engine

    engine = build_engine(tier)  # the server's own engine for this tier
    out = {"texts": [], "logprobs": [], "embeddings": []}
    try:
        for i in tqdm(range(0, len(rows), batch), desc=f"{tier.name}", unit="batch"):
            gens = engine.generate_many(
                [
                    GenerationRequest(prompt=r["prompt"], embed=True, decoding=_row(decoding, i + j))
                    for j, r in enumerate(rows[i : i + batch])
                ]
            )
            out["texts"] += [g.text for g in gens]
            out["logprobs"] += [g.logprobs for g in gens]
            out["embeddings"] += [g.embedding for g in gens]
    finally:
        engine.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)
    return out


def _row(d: Decoding, i: int) -> Decoding:
    return replace(d, seed=d.seed + i) if d.seed is not None else d


def run_offline(
    cfg: CascadeConfig,
    rows: list[dict],
    metric: str = "exact_match",
    cache_dir: Path = DEFAULT_CACHE,
    tiers: list[str] | None = None,
    decoding: Optional[Decoding] = None,
) -> dict[str, OfflineTierRun]:
    """Every tier's answers (``tiers``: only these) scored with ``metric``; ``decoding``: the decoding they
    are served with (thresholds are fitted for it)."""
    score, field = offline_metric(metric)
    missing = next((i for i, r in enumerate(rows) if field not in r), None)
    if missing is not None:
        raise ValueError(f"metric {metric!r} compares answers with each row's {field!r}; row {missing + 1} has none")
    runs = {}
    for tier in cfg.tiers:
        if tiers and tier.name not in tiers:
            continue
        raw = run_tier(tier, rows, Path(cache_dir), decoding=decoding)
        runs[tier.name] = OfflineTierRun(
            tier=tier.name,
            texts=raw["texts"],
            logprobs=raw["logprobs"],
            embeddings=np.asarray(raw["embeddings"], dtype=np.float64),
            quality=np.array([score(t, r[field]) for t, r in zip(raw["texts"], rows)]),
        )
    return runs
