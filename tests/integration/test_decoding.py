"""Decoding controls through `cascade serve`, over the OpenAI front (the official client) and gRPC: stop
strings cut the answer and the stream, n answers, list prompts, log-probs in OpenAI's shape equal to gRPC's,
echo, usage in streams, and every field the cascade cannot honour refused naming it. Real Ray Serve, real
HTTP and gRPC, the shipped pair."""

from __future__ import annotations

import grpc
import openai
import pytest

from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving.config import TOY_CONFIG, load_config
from serving.ops.client import CascadeClient
from serving.ops.local import cascade_server

pytestmark = pytest.mark.integration
CFG = load_config(TOY_CONFIG)
Q = "What is 4821 + 377?"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with cascade_server(CFG, tmp_path_factory.mktemp("decoding")) as s:
        yield s


@pytest.fixture(scope="module")
def api(server):
    return openai.OpenAI(base_url=server.http_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def client(server):
    with CascadeClient(server.address, timeout=60) as c:
        yield c


def chat(api, model="cascade", content=Q, **kw):
    return api.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def streamed(api, **kw):
    chunks = list(chat(api, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


def test_stop_cuts_the_answer_and_the_stream_before_the_stop_string(api):
    full = chat(api, model="cascade:strong").choices[0].message.content
    assert len(full) >= 3, full
    stop = full[2]
    cut = full[: full.index(stop)]
    r = chat(api, model="cascade:strong", stop=[stop, "never-there"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (cut, "stop")
    chunks, text = streamed(api, model="cascade:strong", stop=stop)
    assert text == cut and all(stop not in (c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    # on the cascade too, whichever tier answers: its text ends before the stop string
    r = chat(api, stop=[stop])
    assert stop not in r.choices[0].message.content and r.choices[0].finish_reason == "stop"


def test_n_answers_each_its_own_walk_usage_summed(api):
    one = chat(api)
    r = chat(api, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content == one.choices[0].message.content for c in r.choices)  # greedy: the same answer
    assert r.usage.completion_tokens == 3 * one.usage.completion_tokens  # the answers' tokens, summed
    assert len(r.model_extra["cascade"]["choices"]) == 3


def test_completions_take_a_list_of_prompts_and_echo(api):
    r = api.completions.create(model="cascade", prompt=["What is 1 + 2?", "What is 3 + 4?"], max_tokens=8)
    assert [c.index for c in r.choices] == [0, 1] and all(c.text for c in r.choices)
    r = api.completions.create(model="cascade", prompt="What is 1 + 2?", echo=True, max_tokens=8)
    assert r.choices[0].text.startswith("What is 1 + 2?")


def test_logprobs_in_openai_shape_equal_grpc_token_logprobs(api, client):
    r = chat(api, model="cascade:weak", logprobs=True)
    content = r.choices[0].logprobs.content
    g = client.generate(
        pb.GenerateRequest(
            prompt="", messages=[pb.Message(role="user", content=Q)], force_tier="weak", include_logprobs=True
        )
    )
    assert [t.logprob for t in content] == pytest.approx(list(g.tiers[0].token_logprobs))
    assert r.choices[0].message.content in "".join(t.token for t in content)  # special tokens are spelled out
    assert list(g.tiers[0].tokens) == [t.token for t in content] and len(g.tiers[0].token_ids) == len(content)
    c = api.completions.create(model="cascade:weak", prompt=Q, logprobs=0, max_tokens=8)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) and lp.text_offset[0] == 0


def test_streams_report_usage_when_asked(api):
    chunks, _ = streamed(api, stream_options={"include_usage": True, "continuous_usage_stats": True})
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens > 0
    texts = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts and all(c.usage is not None and c.usage.completion_tokens > 0 for c in texts)


@pytest.mark.parametrize(
    "kw,param",
    [
        (dict(response_format={"type": "json_object"}), "response_format"),
        (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), "tools"),
        (dict(extra_body={"frobnicate": 1}), "frobnicate"),
        (dict(logit_bias={"not-a-token": 1}), "logit_bias"),
        (dict(extra_body={"stop_token_ids": [10**7]}), "stop_token_ids"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_it(api, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        chat(api, **kw)
    assert e.value.status_code == 400 and f"`{param}`" in str(e.value)


def test_echo_with_logprobs_on_the_cascade_is_refused(api):
    with pytest.raises(openai.BadRequestError) as e:
        api.completions.create(model="cascade", prompt=Q, echo=True, logprobs=1, max_tokens=4)
    assert "`echo`" in str(e.value) and "one tier" in str(e.value)


def test_grpc_decoding_stop_and_n(client):
    full = client.generate(pb.GenerateRequest(prompt=Q, force_tier="strong")).text
    stop = full[2]
    r = client.generate(pb.GenerateRequest(prompt=Q, force_tier="strong", decoding=pb.Decoding(stop=[stop])))
    assert r.text == full[: full.index(stop)] and r.tiers[-1].finish_reason == "stop"
    r = client.generate(pb.GenerateRequest(prompt=Q, n=2))
    assert len(r.choices) == 2 and r.choices[0].text == r.choices[1].text == r.text
    assert r.usage.completion_tokens == sum(c.usage.completion_tokens for c in r.choices)
    for req, field in [
        (pb.GenerateRequest(prompt=Q, decoding=pb.Decoding(temperature=5)), "decoding.temperature"),
        (pb.GenerateRequest(prompt=Q, decoding=pb.Decoding(stop=["x"] * 9)), "decoding.stop"),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            client.generate(req)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and f"`{field}`" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        list(client.stream(pb.GenerateRequest(prompt=Q, n=2)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "`n`" in e.value.details()


# ---- sampling: honoured by every engine of the shipped pair (continuous) ----------------------------------------
def test_sampled_answers_are_reproducible_with_a_seed(api, client):
    kw = dict(temperature=1.0, seed=1234, max_tokens=12)
    a, b = chat(api, **kw), chat(api, **kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.model_extra["cascade"]["tier"] == b.model_extra["cascade"]["tier"]
    # the same seed over gRPC, forced to one tier, streamed and unary: the same tokens
    req = pb.GenerateRequest(prompt=Q, force_tier="weak", decoding=pb.Decoding(temperature=1.0, seed=99))
    unary = client.generate(req).text
    assert "".join(m.text for m in client.stream(req)) == unary
    answers = {
        client.generate(
            pb.GenerateRequest(prompt=Q, force_tier="weak", decoding=pb.Decoding(temperature=1.5, seed=s))
        ).text
        for s in range(8)
    }
    assert len(answers) > 1  # different seeds draw different answers (8 draws at temperature 1.5)


def test_sampling_does_not_move_the_score(client):
    """The rule reads the emitted tokens' log-probs under the unmodified distribution: a sampled answer that
    happens to equal the greedy one has the greedy one's score."""
    greedy = client.generate(pb.GenerateRequest(prompt=Q, force_tier="weak", include_logprobs=True))
    for s in range(6):
        r = client.generate(
            pb.GenerateRequest(
                prompt=Q, force_tier="weak", include_logprobs=True, decoding=pb.Decoding(temperature=0.3, seed=s)
            )
        )
        if list(r.tiers[0].token_ids) == list(greedy.tiers[0].token_ids):
            assert list(r.tiers[0].token_logprobs) == pytest.approx(list(greedy.tiers[0].token_logprobs), abs=1e-4)
            assert r.score == pytest.approx(greedy.score, abs=1e-4)
            return
    pytest.fail("no sampled answer at temperature 0.3 equalled the greedy one in 6 draws")


def test_ignore_eos_gives_exactly_max_tokens_and_top_logprobs_come_when_asked(api):
    r = chat(api, model="cascade:strong", max_tokens=7, extra_body={"ignore_eos": True}, logprobs=True, top_logprobs=3)
    c = r.choices[0]
    assert r.usage.completion_tokens == 7 and c.finish_reason == "length" and len(c.logprobs.content) == 7
    for t in c.logprobs.content:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
        assert t.logprob <= t.top_logprobs[0].logprob + 1e-6


def test_echo_with_logprobs_on_one_tier_equals_an_offline_forward_pass(api):
    import torch
    from transformers import AutoModelForCausalLM

    from serving.config import ModelSource
    from serving.core.types import GenerationRequest
    from serving.engines.hf import HFTokenizer

    prompt = "What is 12 + 30?"
    r = api.completions.create(model="cascade:weak", prompt=prompt, echo=True, logprobs=1, max_tokens=4)
    lp = r.choices[0].logprobs
    src = CFG.tier("weak").model.source
    ids = HFTokenizer(ModelSource(source=src)).encode(GenerationRequest(prompt=prompt))
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(src)(torch.tensor([ids])).logits[0].float()
    want = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
    assert r.choices[0].text.startswith(prompt) and lp.token_logprobs[0] is None
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(want, abs=1e-4)


EVERY_FIELD = [
    dict(temperature=0.7, seed=3),
    dict(temperature=0.9, top_p=0.8, seed=3),
    dict(temperature=0.9, seed=3, extra_body={"top_k": 3}),
    dict(temperature=0.9, seed=3, extra_body={"min_p": 0.1}),
    dict(extra_body={"repetition_penalty": 1.3}),
    dict(presence_penalty=0.8),
    dict(frequency_penalty=0.8),
    dict(extra_body={"min_tokens": 6}),
    dict(extra_body={"stop_token_ids": [5]}),
    dict(max_completion_tokens=5, extra_body={"ignore_eos": True}),
    dict(logprobs=True, top_logprobs=2),
    dict(stop=["1", "2", "3", "4"]),
]


@pytest.mark.parametrize("model", ["cascade", "cascade:weak"])
@pytest.mark.parametrize(
    "kw", EVERY_FIELD, ids=lambda kw: ",".join(sorted(set(kw) - {"extra_body"} | set(kw.get("extra_body", {}))))
)
def test_every_field_is_honoured_unary_and_streamed(api, model, kw):
    """Each field on the cascade and on a forced tier, unary and streamed: answered (not refused), and a stream
    carries the same answer as the unary call (seeded where it samples)."""
    kw = kw if "max_completion_tokens" in kw else {"max_tokens": 12, **kw}
    r = chat(api, model=model, **kw)
    text = r.choices[0].message.content
    chunks = list(chat(api, model=model, stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    extra = kw.get("extra_body", {})
    if "min_tokens" in extra:
        assert r.model_extra["cascade"]["tiers"][-1]["completion_tokens"] >= 6
    if "ignore_eos" in extra:
        assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    if "stop_token_ids" in extra and r.choices[0].finish_reason == "stop":
        assert r.model_extra["cascade"]["tiers"][-1]["completion_tokens"] <= 12
    if kw.get("logprobs"):
        assert all(len(t.top_logprobs) == 2 for t in r.choices[0].logprobs.content)
    if "stop" in kw:
        assert not any(s in text for s in kw["stop"])
