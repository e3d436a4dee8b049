"""A judge over labelled data, offline, through the server's own engine (``Engine.choice_logprobs``: the same
batched prefill the judge deployment runs), with a cache; reference selection and the judge's calibration.

The cache keeps, per judge model (``model_fingerprint``) and prompt, the two verdict log-probs and the prompt's
token count, in one JSON file per judge; a later run that asks for more prompts (the whole test split after a
window's share of it) scores only the new ones. The judge's score is aggregated from them here
(``serving.deferral.judges``), so changing the aggregation needs no model run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from serving.config import Tier
from serving.deferral import judges
from serving.deferral.judges import Comparison, Reference
from serving.evaluation.offline import DEFAULT_CACHE, model_fingerprint

BATCH = 8  # prompts per batched prefill (CPU: larger batches of ~110-token prompts get slower per token)


def _key(c: Comparison, verdicts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([c.messages, list(verdicts)], sort_keys=True).encode()).hexdigest()[:24]


class JudgeCache:
    """The verdict log-probs of one judge model, by prompt."""

    def __init__(self, tier: Tier, cache_dir: Path = DEFAULT_CACHE):
        self.tier = tier
        fp = hashlib.sha256(("judge:" + model_fingerprint(tier)).encode()).hexdigest()[:24]
        self.path = Path(cache_dir) / f"judge-{tier.name}-{fp}.json"
        self.entries: dict[str, list] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.engine = None
        self.seconds = 0.0  # time spent scoring prompts in this process

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries))
        tmp.replace(self.path)

    def read(self, comparisons: Sequence[Comparison], verdicts: Sequence[str], log=print) -> list[tuple]:
        """(log-prob of each verdict, prompt tokens) per comparison; the missing ones scored in batches."""
        keys = [_key(c, verdicts) for c in comparisons]
        todo = {k: c for k, c in zip(keys, comparisons) if k not in self.entries}
        if todo:
            from serving.core.types import GenerationRequest
            from serving.engines import build_engine

            if self.engine is None:
                self.engine = build_engine(self.tier)
            e = self.engine
            ids = [e.encode_text(v)[0] for v in verdicts]
            items = list(todo.items())
            t0 = time.perf_counter()
            for i in range(0, len(items), BATCH):
                batch = items[i : i + BATCH]
                reqs = [GenerationRequest(messages=c.messages) for _, c in batch]
                lps = e.run(e.choice_logprobs(reqs, ids))
                for (k, _), r, lp in zip(batch, reqs, lps):
                    self.entries[k] = [lp, e.count_tokens(r)]
                if (i // BATCH) % 25 == 24:
                    self._save()
                    log(f"  judged {i + len(batch)}/{len(items)} prompts ({time.perf_counter() - t0:.0f} s)")
            self.seconds += time.perf_counter() - t0
            self._save()
        return [tuple(self.entries[k]) for k in keys]

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def judge_rows(
    cache: JudgeCache,
    method: str,
    questions: Sequence[str],
    answers: Sequence[str],
    references: Sequence[Reference] = (),
    both_orders: bool = False,
    idx: Optional[Sequence[int]] = None,
    log=print,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(judge score, prompts, judge prompt tokens) per row (rows outside ``idx``: NaN, 0, 0)."""
    n = len(questions)
    idx = list(range(n)) if idx is None else list(idx)
    verdicts = judges.verdicts(method)
    per_row = {i: judges.prompts(method, questions[i], answers[i], references, both_orders) for i in idx}
    flat = [c for i in idx for c in per_row[i]]
    got = iter(cache.read(flat, verdicts, log))
    scores, prompts, tokens = np.full(n, np.nan), np.zeros(n), np.zeros(n)
    for i in idx:
        rows = [next(got) for _ in per_row[i]]
        scores[i] = judges.aggregate(method, per_row[i], [r[0] for r in rows], references)
        prompts[i], tokens[i] = len(rows), sum(r[1] for r in rows)
    return scores, prompts, tokens


def pick_references(
    questions: Sequence[str],
    answers: Sequence[str],
    good: Sequence[bool],
    n: int,
    seed: int = 0,
    tasks: Optional[Sequence[str]] = None,
) -> list[int]:
    """Indices of ``n`` references, balanced: ceil(n/2) good weak answers and floor(n/2) bad ones (fewer of a
    kind when the data has fewer), drawn at random with ``seed``, each from a different task where ``tasks``
    says which (so the references do not all look like one kind of question), non-empty answers only."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(questions))
    want = {True: (n + 1) // 2, False: n // 2}
    picked: list[int] = []
    seen: set = set()
    for distinct in (True, False):  # distinct tasks first; then anything to fill up
        for i in order:
            i = int(i)
            kind = bool(good[i])
            if i in picked or not answers[i].strip() or want[kind] == 0:
                continue
            if distinct and tasks is not None and tasks[i] in seen:
                continue
            picked.append(i)
            want[kind] -= 1
            if tasks is not None:
                seen.add(tasks[i])
    # alternate good and bad, so that the alternating target slot meets both kinds in both positions
    goods = [i for i in picked if good[i]]
    bads = [i for i in picked if not good[i]]
    out = []
    while goods or bads:
        if goods:
            out.append(goods.pop(0))
        if bads:
            out.append(bads.pop(0))
    return out


def judge_threshold(judge_scores: np.ndarray, defer_count: int) -> float:
    """The threshold that defers the ``defer_count`` lowest judge scores (a judge inside the window then
    defers as many answers as the token-level rule would have there: it picks which)."""
    from serving.evaluation.thresholds import _between

    s = np.sort(np.asarray(judge_scores, dtype=np.float64))
    if len(s) == 0:
        return 0.0
    return _between(s, int(defer_count))


def score_quantiles(scores: np.ndarray, points: int = 201) -> list[float]:
    """The token-level scores' quantiles (what a config's ``judge.window`` turns into bounds at load)."""
    return [float(x) for x in np.quantile(np.asarray(scores, dtype=np.float64), np.linspace(0, 1, points))]


def compute_params(tier: Tier) -> int:
    """The model's parameter count from its config (no weights loaded): the judge's compute share."""
    from serving.engines.hf import HFTokenizer

    c = HFTokenizer(tier.model).config
    h, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    inter = getattr(c, "intermediate_size", 4 * h)
    heads, kv = c.num_attention_heads, getattr(c, "num_key_value_heads", c.num_attention_heads)
    head_dim = getattr(c, "head_dim", None) or h // heads
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    mlp = 3 * h * inter
    embed = vocab * h * (1 if getattr(c, "tie_word_embeddings", False) else 2)
    return int(layers * (attn + mlp + 2 * h) + embed + h)
