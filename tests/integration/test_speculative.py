"""Speculative deferral served end to end (`deferral.on_defer: verify`): the strong tier verifies the weak
draft in one forward pass and decodes only from the first disagreement; its answers equal strong-only
greedy answers. Real Ray Serve, real gRPC, the shipped pair."""

from __future__ import annotations

import pytest

from serving.config import TOY_CONFIG, load_config, parse_config
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server
from serving.tasks.arithmetic import examples

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    raw = load_config(TOY_CONFIG).model_dump(mode="json")
    raw["deferral"]["on_defer"] = "verify"
    with cascade_server(parse_config(raw), tmp_path_factory.mktemp("spec")) as server:
        with CascadeClient(server.address, timeout=120) as c:
            yield c


def test_verified_answers_equal_strong_only_answers(client):
    deferred = 0
    for e in examples(5, 60):
        r = client.generate(make_request(e.prompt))
        if not r.deferred:
            continue
        deferred += 1
        alone = client.generate(make_request(e.prompt, force_tier="strong"))
        weak, strong = r.tiers
        assert r.text == alone.text and strong.completion_tokens == alone.tiers[0].completion_tokens
        assert strong.draft_tokens == weak.completion_tokens > 0  # the weak tokens it had when it was stopped
        assert 0 <= strong.draft_accepted_tokens <= strong.draft_tokens
    assert deferred >= 10


def test_streamed_verified_answer(client):
    e = next(e for e in examples(5, 60) if client.generate(make_request(e.prompt)).deferred)
    *chunks, final = client.stream(make_request(e.prompt))
    assert "".join(c.text for c in chunks) == client.generate(make_request(e.prompt, force_tier="strong")).text
    assert final.tier == "strong" and final.tiers[1].draft_tokens > 0
