"""The OpenAI-compatible HTTP front (Serve's HTTP proxy) called with the official `openai` client against
`cascade serve`: the same cascade walk, validation, auth and admission as gRPC. Real Ray Serve, real
HTTP, the shipped pair."""

from __future__ import annotations

import asyncio
import hashlib
import math
import urllib.request

import openai
import pytest

from serving.config import TOY_CONFIG, Auth, load_config
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server, wait_for
from serving.tasks.arithmetic import examples

pytestmark = pytest.mark.integration
TOKEN = "http-test-token"
CFG = load_config(TOY_CONFIG)
CFG.server.auth = Auth(token_sha256=[hashlib.sha256(TOKEN.encode()).hexdigest()], tokens_env=None)
CFG.limits.max_inflight = 4
AUTH = [("authorization", f"Bearer {TOKEN}")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with cascade_server(CFG, tmp_path_factory.mktemp("http")) as s:

        def models_ok():
            req = urllib.request.Request(s.http_url + "/models", headers={"Authorization": f"Bearer {TOKEN}"})
            try:
                return urllib.request.urlopen(req, timeout=5).status == 200
            except Exception:
                return False

        wait_for(models_ok, timeout=60, what="the HTTP routes")
        yield s


@pytest.fixture(scope="module")
def api(server):
    return openai.OpenAI(base_url=server.http_url, api_key=TOKEN, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def grpc_client(server):
    with CascadeClient(server.address, timeout=60) as c:
        yield c


def chat(api, content, **kw):
    return api.chat.completions.create(model="cascade", messages=[{"role": "user", "content": content}], **kw)


def test_models_lists_the_cascade_and_its_tiers(api):
    assert [m.id for m in api.models.list().data] == ["cascade", "cascade:weak", "cascade:strong"]


def test_chat_and_completions_unary_with_usage_equal_to_grpc(api, grpc_client):
    for prompt in ("What is 12 + 30?", "What is 48213 + 99377?"):  # answered by weak; deferred to strong
        r = chat(api, prompt)
        g = grpc_client.generate(make_request(messages=[{"role": "user", "content": prompt}]), metadata=AUTH)
        assert r.choices[0].message.content == g.text and r.choices[0].finish_reason == "stop"
        c = r.model_extra["cascade"]
        assert (c["tier"], c["deferred"], c["rule"]) == (g.tier, g.deferred, g.rule)
        assert c["score"] == pytest.approx(g.score) and [t["tier"] for t in c["tiers"]] == [t.tier for t in g.tiers]
        # OpenAI's usage counts the answer (what load tools read); every tier's work is cascade.usage, gRPC's usage
        assert r.usage.prompt_tokens == g.tiers[-1].prompt_tokens == c["tiers"][-1]["prompt_tokens"]
        assert r.usage.completion_tokens == g.tiers[-1].completion_tokens == c["tiers"][-1]["completion_tokens"]
        assert c["usage"]["prompt_tokens"] == g.usage.prompt_tokens
        if not g.deferred:
            assert c["usage"]["completion_tokens"] == g.usage.completion_tokens
        else:  # the weak tier's tokens decoded before its early DEFER took effect vary by a step or two with
            # timing (they are real work, so cascade.usage counts them); what the rule read and the answer do not
            assert [t["decision_tokens"] for t in c["tiers"]][0] == g.tiers[0].decision_tokens
            assert c["usage"]["completion_tokens"] == sum(t["completion_tokens"] for t in c["tiers"])
    done = api.completions.create(model="cascade", prompt="What is 12 + 30?")
    assert done.choices[0].text == "42" and done.usage.completion_tokens > 0


def test_streaming_chat_and_completions_with_usage(api):
    stream = api.chat.completions.create(
        model="cascade",
        messages=[{"role": "user", "content": "What is 12 + 30?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "42" and chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    text = "".join(
        c.choices[0].text
        for c in api.completions.create(model="cascade", prompt="What is 12 + 30?", stream=True)
        if c.choices
    )
    assert text == "42"


def test_forced_tier_and_threshold_override(api):
    r = api.chat.completions.create(model="cascade:strong", messages=[{"role": "user", "content": "What is 12 + 30?"}])
    assert r.model_extra["cascade"]["tier"] == "strong" and r.choices[0].message.content == "42"
    r = chat(api, "What is 12 + 30?", extra_body={"cascade": {"threshold": 1.0}})
    assert (r.model_extra["cascade"]["tier"], r.model_extra["cascade"]["deferred"]) == ("strong", True)
    r = chat(api, "What is 12 + 30?", extra_body={"cascade": {"force_tier": "weak"}})
    assert r.model_extra["cascade"]["tier"] == "weak"


@pytest.mark.parametrize(
    "kw,param",
    [
        (dict(messages=[{"role": "user", "content": ""}]), "messages[0].content"),
        (dict(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role"),
        (dict(messages=[{"role": "user", "content": "hi"}], max_tokens=100_000), "max_tokens"),
        (dict(messages=[{"role": "user", "content": "hi"}], temperature=2.5), "temperature"),
        (dict(messages=[{"role": "user", "content": "hi"}], stop=["x"] * 9), "stop"),
        (
            dict(messages=[{"role": "user", "content": "hi"}], tools=[{"type": "function", "function": {"name": "f"}}]),
            "tools",
        ),
        (dict(messages=[{"role": "user", "content": "hi"}], model="gpt-4o"), "model"),
        (dict(messages=[{"role": "user", "content": "hi"}], model="cascade:medium"), "model"),
        (
            dict(messages=[{"role": "user", "content": "hi"}], extra_body={"cascade": {"threshold": "high"}}),
            "cascade.threshold",
        ),
    ],
)
def test_bad_input_is_400_naming_the_field(api, kw, param):
    kw = {"model": "cascade", **kw}
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(**kw)
    assert e.value.status_code == 400 and param in str(e.value)


def test_no_or_wrong_token_is_401(server):
    for key in ("wrong", ""):
        bad = openai.OpenAI(
            base_url=server.http_url,
            api_key=key or "x",
            max_retries=0,
            default_headers={} if key else {"Authorization": ""},
        )
        with pytest.raises(openai.AuthenticationError) as e:
            chat(bad, "What is 1 + 1?")
        assert e.value.status_code == 401


def test_overload_is_429_with_retry_after(server):
    api = openai.AsyncOpenAI(base_url=server.http_url, api_key=TOKEN, max_retries=0, timeout=60)

    async def one():
        try:
            await api.chat.completions.create(
                model="cascade", messages=[{"role": "user", "content": "What is 48213 + 99377?"}]
            )
            return 200, None
        except openai.RateLimitError as e:
            return 429, e.response.headers.get("retry-after")

    async def flood():
        return await asyncio.gather(*(one() for _ in range(40)))

    results = asyncio.run(flood())
    refused = [h for code, h in results if code == 429]
    assert refused and any(code == 200 for code, _ in results)
    assert all(h == str(math.ceil(CFG.limits.retry_after_ms / 1000)) for h in refused)


def test_same_answers_over_grpc_and_http(api, grpc_client):
    """Parity: 100 held-out prompts give the same text, tier and score on both fronts."""
    for e in examples(3, 100):
        g = grpc_client.generate(make_request(messages=[{"role": "user", "content": e.prompt}]), metadata=AUTH)
        r = chat(api, e.prompt)
        c = r.model_extra["cascade"]
        assert (r.choices[0].message.content, c["tier"]) == (g.text, g.tier)
        assert c["score"] == pytest.approx(g.score) or (math.isnan(g.score) and c["score"] == "NaN")
