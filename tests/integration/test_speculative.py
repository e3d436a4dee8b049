"""Speculative deferral served end to end, as a token-level cascade (`deferral.token_rule`): a deferred request's
weak answer is verified by the strong tier in one forward pass, the rule keeps weak tokens, the strong tier's
own token replaces the first it rejects, and the weak tier drafts on from there in blocks. With alpha 0 the
answers equal strong-only greedy answers; with alpha 1 every weak token is kept. Real Ray Serve, real gRPC and
the official `openai` client over HTTP (streaming included), the shipped pair."""

from __future__ import annotations

import grpc
import openai
import pytest

from serving.config import TOY_CONFIG, load_config, parse_config
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server
from serving.tasks.arithmetic import examples

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    raw = load_config(TOY_CONFIG).model_dump(mode="json")
    raw["deferral"]["on_defer"] = "verify"
    raw["deferral"]["token_rule"] = {"rule": "token", "alpha": 0.0, "block": 4}
    with cascade_server(parse_config(raw), tmp_path_factory.mktemp("spec")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with CascadeClient(server.address, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def api(server):
    return openai.OpenAI(base_url=server.http_url, api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def deferred(client):
    """Prompts the cascade defers, with the strong tier's own answers."""
    out = []
    for e in examples(5, 40):
        if client.generate(make_request(e.prompt)).deferred:
            out.append((e.prompt, client.generate(make_request(e.prompt, force_tier="strong"))))
    assert len(out) >= 8
    return out


def test_alpha_zero_answers_equal_strong_only_answers(client, deferred):
    replaced = 0
    for prompt, alone in deferred:
        r = client.generate(make_request(prompt))
        weak, strong = r.tiers
        assert r.text == alone.text and strong.completion_tokens == alone.tiers[0].completion_tokens
        assert strong.draft_tokens >= weak.completion_tokens > 0  # the weak answer, then the blocks it drafted
        assert 0 <= strong.draft_accepted_tokens <= strong.draft_tokens
        rc = r.receipt
        assert 1 <= rc.strong_passes and rc.tokens_replaced <= rc.strong_passes  # at most one replaced a pass
        assert [x.tier for x in rc.lines][:2] == ["weak", "strong"] and all(
            x.discarded for x in rc.lines if x.tier == "weak"
        )
        replaced += rc.tokens_replaced
    assert replaced > 0  # the strong tier corrected some weak tokens


def test_alpha_one_keeps_every_weak_token(client, deferred):
    differs = 0
    for prompt, alone in deferred:
        r = client.generate(make_request(prompt, token_alpha=1.0))
        strong = r.tiers[1]
        assert r.tier == "strong" and r.deferred and r.receipt.tokens_replaced == 0
        # every weak token kept; the strong tier's own token follows each block (the bonus token)
        assert strong.draft_accepted_tokens == strong.draft_tokens > 0
        passes = r.receipt.strong_passes
        assert (
            strong.draft_tokens + passes - 1 <= strong.completion_tokens <= strong.draft_tokens + passes
        )  # (a kept end: none)
        differs += r.text != alone.text
    assert differs > 0  # alpha trades the strong tier's answer for the weak tier's tokens


def test_streamed_token_level_answer_over_grpc(client, deferred):
    prompt, alone = deferred[0]
    *chunks, final = client.stream(make_request(prompt))
    assert "".join(c.text for c in chunks) == alone.text
    assert final.tier == "strong" and final.tiers[1].draft_tokens > 0 and final.receipt.strong_passes >= 1


def test_openai_front_unary_and_streamed_with_the_requests_alpha(api, client, deferred):
    # a prompt whose strong passes replace weak tokens at the config's alpha 0
    prompt, alone = next((p, a) for p, a in deferred if client.generate(make_request(p)).receipt.tokens_replaced)
    r = api.completions.create(model="cascade", prompt=prompt)
    assert r.choices[0].text == alone.text
    c = r.model_extra["cascade"]
    assert c["tier"] == "strong" and c["receipt"]["strong_passes"] >= 1 and "tokens_replaced" in c["receipt"]
    # the request's alpha reaches the walk: every weak token kept. (Not compared with the gRPC answer at alpha 1
    # token for token: with every weak token kept the answer follows the weak tier's near-ties, and CI once saw
    # the continuous engine break one differently between two calls, 19381 against 18381.)
    r = api.completions.create(model="cascade", prompt=prompt, extra_body={"cascade": {"token_alpha": 1.0}})
    kept = r.model_extra["cascade"]
    assert kept["tier"] == "strong" and kept["receipt"]["tokens_replaced"] == 0
    stream = api.completions.create(model="cascade", prompt=prompt, stream=True)
    assert "".join(ch.choices[0].text for ch in stream if ch.choices) == alone.text


def test_a_bad_alpha_is_refused_naming_the_field(client, api, deferred):
    with pytest.raises(grpc.RpcError) as e:
        client.generate(make_request(deferred[0][0], token_alpha=1.5))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "token_alpha" in e.value.details()
    with pytest.raises(openai.BadRequestError) as e:
        api.completions.create(model="cascade", prompt="1 + 1", extra_body={"cascade": {"token_alpha": -0.1}})
    assert "cascade.token_alpha" in str(e.value)


def test_a_sampled_request_takes_the_ordinary_path(client, deferred):
    from serving._proto.cascade.v1 import cascade_pb2 as pb

    req = make_request(deferred[0][0])
    req.decoding.CopyFrom(pb.Decoding(temperature=0.8, seed=3))
    r = client.generate(req)
    assert r.tier == "strong" and r.receipt.tokens_replaced == 0 and r.tiers[1].draft_tokens == 0
