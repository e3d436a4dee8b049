"""A tier on `engine: vllm`, served end to end: `cascade serve` (real Ray Serve, the production path) with
the shipped weak model on `continuous` and the shipped strong model on vLLM (its head_dim 32 is one vLLM's
CPU kernels take), called over real gRPC. Deferred answers, forced strong answers, streams and
speculative verification (vLLM's prompt log-probs) equal the strong model's greedy answers from the
continuous engine; cancelling (early deferral) and engine stats go through vLLM too. The boundary verifies
(`on_defer: verify`): a deferred request makes vLLM score the weak draft (prompt log-probs) and decode on
from the agreeing prefix; a forced request is plain vLLM decoding."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serving.config import TOY_CONFIG, load_config, parse_config
from serving.core.types import GenerationRequest
from serving.engines import build_engine
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server
from serving.tasks.arithmetic import examples
from tests.conftest import need_vllm

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cfg():
    need_vllm()
    raw = load_config(TOY_CONFIG).model_dump(mode="json")
    raw["tiers"][1]["engine"] = {"name": "vllm", "enforce_eager": True}
    raw["tiers"][1]["timeout_s"] = 120
    raw["deferral"]["on_defer"] = "verify"
    return parse_config(raw)


@pytest.fixture(scope="module")
def server(cfg, tmp_path_factory):
    with cascade_server(cfg, tmp_path_factory.mktemp("vllm"), timeout=600) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with CascadeClient(server.address, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def strong_greedy(cfg):
    """The strong model's answers from the continuous engine, in-process: what vLLM must reproduce."""
    tier = cfg.tiers[1].model_copy(update={"engine": cfg.tiers[0].engine})
    engine = build_engine(tier)
    try:

        def answer(prompts):
            return [g.text for g in engine.generate_many([GenerationRequest(prompt=p) for p in prompts])]

        yield answer
    finally:
        engine.close()


def test_deferred_and_forced_answers_come_from_vllm_and_equal_greedy(client, strong_greedy):
    qs = list(examples(5, 40))
    want = strong_greedy([e.prompt for e in qs])
    deferred = 0
    for e, ref in zip(qs, want):
        forced = client.generate(make_request(e.prompt, force_tier="strong"))
        assert forced.tier == "strong" and forced.text == ref
        assert forced.tiers[0].completion_tokens > 0 and forced.tiers[0].prompt_tokens > 0
        r = client.generate(make_request(e.prompt))
        if r.deferred:
            deferred += 1
            assert r.tier == "strong" and r.text == ref and r.tiers[1].draft_tokens > 0
    assert deferred >= 5


def test_streamed_deferred_answer_from_vllm(client, strong_greedy):
    e = next(e for e in examples(5, 40) if client.generate(make_request(e.prompt)).deferred)
    *chunks, final = client.stream(make_request(e.prompt))
    assert final.tier == "strong" and final.deferred
    assert "".join(c.text for c in chunks) == strong_greedy([e.prompt])[0]


def test_status_shows_vllm_engine_stats(server, client):
    client.generate(make_request("What is 12 + 30?", force_tier="strong"))
    out = subprocess.run(
        [sys.executable, "-m", "serving.ops.cli", "status", "--ray-address", server.ray_address, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    engines = json.loads(out.stdout.strip().splitlines()[-1])["router"]["engines"]
    assert engines["strong"]["engine"] == "vllm" and engines["strong"]["requests"] > 0
    assert engines["weak"]["engine"] == "continuous"


def test_seeded_sampling_on_the_vllm_tier_is_reproducible(client):
    """vLLM honours per-request decoding natively (SamplingParams): the same seed draws the same answer,
    unary and streamed; a stop string cuts it."""
    from serving._proto.cascade.v1 import cascade_pb2 as pb

    req = pb.GenerateRequest(
        prompt="What is 12 + 30?",
        force_tier="strong",
        include_logprobs=True,
        decoding=pb.Decoding(temperature=1.0, seed=5, top_logprobs=2),
    )
    a, b = client.generate(req), client.generate(req)
    assert a.text == b.text and list(a.tiers[0].token_ids) == list(b.tiers[0].token_ids)
    assert "".join(m.text for m in client.stream(req)) == a.text
    assert all(len(alt.token_ids) == 2 for alt in a.tiers[0].top_logprobs)
    if len(a.text) > 1:
        cut = client.generate(
            pb.GenerateRequest(
                prompt="What is 12 + 30?",
                force_tier="strong",
                decoding=pb.Decoding(temperature=1.0, seed=5, stop=[a.text[1]]),
            )
        )
        assert cut.text == a.text[: a.text.index(a.text[1])]


def test_a_draft_model_speculates_and_the_answers_stay_the_models_own(cfg, strong_greedy):
    """``engine.draft``: vLLM's speculative decoding with a draft model (here the strong model drafting for
    itself: the toy weak model's 16-wide heads are not a head size vLLM's CPU attention takes). Drafts are
    proposed and accepted, greedy answers and a verification pass equal the model's own, and the controls
    vLLM's speculative decoding cannot take are refused by name, not dropped."""
    tier = cfg.tiers[1]
    engine = tier.engine.model_copy(update={"draft": {"source": tier.model.source, "tokens": 3}})
    spec = build_engine(tier.model_copy(update={"engine": type(tier.engine).model_validate(engine.model_dump())}))
    try:
        prompts = [e.prompt for e in examples(9, 12)]
        got = spec.generate_many([GenerationRequest(prompt=p) for p in prompts])
        assert [g.text for g in got] == strong_greedy(prompts)
        s = spec.stats()
        assert s.draft_tokens > 0 and s.accepted_draft_tokens == s.draft_tokens  # its own draft: all accepted
        req = GenerationRequest(prompt=prompts[0])
        ids = got[0].token_ids
        lps, greedy, _ = spec.run(spec.score(req, ids))  # greedy: a choice at every position, and one after
        assert greedy[: len(ids)] == ids and lps == pytest.approx(got[0].logprobs, abs=2e-3)
        assert {"min_p", "logit_bias"}.isdisjoint(spec.decoding_support) and "top_k" in spec.decoding_support
    finally:
        spec.close()
