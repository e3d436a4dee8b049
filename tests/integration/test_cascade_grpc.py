"""The served cascade end to end: `cascade serve` (real Ray Serve, its gRPC proxy), the shipped
weak/strong pair, called over real gRPC."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from serving.config import TOY_CONFIG, load_config
from serving.core.types import GenerationRequest
from serving.deferral import make_rule, should_defer
from serving.engines import build_engine
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server
from serving.tasks.arithmetic import examples
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
CFG = load_config(TOY_CONFIG)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with cascade_server(CFG, tmp_path_factory.mktemp("serve")) as s:
        yield s


@pytest.fixture(scope="module")
def address(server):
    return server.address


@pytest.fixture(scope="module")
def client(address):
    with CascadeClient(address, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def cases():
    """An easy question the weak tier answers confidently and correctly, and one it gets wrong with
    a score under the threshold while the strong tier is right: found by running both tiers
    in-process through the same engines the server uses."""
    score = make_rule(CFG.deferral.rule, CFG.deferral.alpha)
    weak, strong = (build_engine(t) for t in CFG.tiers)
    exs = list(examples(3, 200))
    wg = weak.generate_many([GenerationRequest(prompt=e.prompt) for e in exs])
    easy = next(
        e
        for e, g in zip(exs, wg)
        if g.text == e.reference and not should_defer(score(g.logprobs), CFG.deferral.threshold)
    )
    # wrong, deferred, and its least likely token not the last one (so the early DEFER cuts the answer short)
    hard_pool = [
        (e, g)
        for e, g in zip(exs, wg)
        if g.text != e.reference
        and should_defer(score(g.logprobs), CFG.deferral.threshold)
        and g.logprobs.index(min(g.logprobs)) < len(g.logprobs) - 1
    ]
    sg = strong.generate_many([GenerationRequest(prompt=e.prompt) for e, _ in hard_pool])
    weak.close()
    strong.close()
    hard, hard_weak = next((e, g) for (e, g), s in zip(hard_pool, sg) if s.text == e.reference)
    return {
        "easy": easy,
        "hard": hard,
        "hard_weak_text": hard_weak.text,
        "hard_weak_tokens": hard_weak.completion_tokens,
    }


def test_easy_question_is_answered_by_weak(client, cases):
    e = cases["easy"]
    r = client.generate(make_request(e.prompt))
    assert (r.text, r.tier, r.deferred) == (e.reference, "weak", False)
    assert r.score >= r.threshold == CFG.deferral.threshold
    assert [t.tier for t in r.tiers] == ["weak"] and r.usage.completion_tokens == r.tiers[0].completion_tokens > 0
    assert r.rule == CFG.deferral.rule and r.total_latency_ms > 0 and r.request_id


def test_question_weak_gets_wrong_is_deferred_to_strong(client, cases):
    e = cases["hard"]
    r = client.generate(make_request(e.prompt, include_logprobs=True))
    assert (r.text, r.tier, r.deferred) == (e.reference, "strong", True)
    assert r.score < r.threshold
    weak, strong = r.tiers
    assert (weak.tier, strong.tier) == ("weak", "strong")
    # exact early deferral: the weak tier was stopped at the first token whose log-prob fell below the
    # threshold; its text so far is a prefix of its whole answer
    assert (weak.finish_reason, weak.decided_early) == ("deferred", True)
    assert cases["hard_weak_text"].startswith(weak.text)
    # the rule decided at its first unlikely token; the engine may have decoded a few more meanwhile
    n = weak.decision_tokens
    assert 0 < n <= weak.completion_tokens == len(weak.token_logprobs) and n < cases["hard_weak_tokens"]
    assert weak.score == pytest.approx(r.score) and not strong.HasField("score")
    assert min(weak.token_logprobs[:n]) == pytest.approx(r.score) == weak.token_logprobs[n - 1]  # the deciding token
    assert r.usage.completion_tokens == weak.completion_tokens + strong.completion_tokens
    assert weak.latency_ms > 0 and strong.latency_ms > 0


def test_force_tier_both_ways(client, cases):
    r = client.generate(make_request(cases["hard"].prompt, force_tier="weak"))
    assert (r.tier, r.deferred, r.text) == ("weak", False, cases["hard_weak_text"])
    assert not math.isnan(r.score)
    r = client.generate(make_request(cases["easy"].prompt, force_tier="strong"))
    assert (r.tier, r.deferred, r.text) == ("strong", False, cases["easy"].reference)
    assert math.isnan(r.score) and [t.tier for t in r.tiers] == ["strong"]


def test_threshold_override_at_both_extremes(client, cases):
    never = client.generate(make_request(cases["hard"].prompt, threshold=-1e9))
    assert (never.tier, never.deferred, never.threshold) == ("weak", False, -1e9)
    always = client.generate(make_request(cases["easy"].prompt, threshold=1.0))  # log-probs are <= 0
    assert (always.tier, always.deferred, always.text) == ("strong", True, cases["easy"].reference)


def test_stream_deferred_answer_from_strong(client, cases):
    msgs = list(client.stream(make_request(cases["hard"].prompt)))
    *chunks, final = msgs
    assert final.finished and final.text == "" and (final.tier, final.deferred) == ("strong", True)
    assert chunks and all(c.tier == "strong" and not c.finished for c in chunks)
    assert "".join(c.text for c in chunks) == cases["hard"].reference
    assert [t.tier for t in final.tiers] == ["weak", "strong"]


def test_stream_weak_answer_and_forced_tier(client, cases):
    *chunks, final = client.stream(make_request(cases["easy"].prompt))
    assert "".join(c.text for c in chunks) == cases["easy"].reference
    assert (final.tier, final.deferred, final.finished) == ("weak", False, True)
    *chunks, final = client.stream(make_request(cases["hard"].prompt, force_tier="weak"))
    assert "".join(c.text for c in chunks) == cases["hard_weak_text"]
    assert final.tier == "weak" and not math.isnan(final.score)


def test_chat_messages_and_request_id_metadata(client, cases):
    e = cases["easy"]
    r = client.generate(
        make_request(messages=[{"role": "user", "content": e.prompt}]), metadata=[("request_id", "test-req-42")]
    )
    assert r.text == e.reference and r.request_id == "test-req-42"


BAD = [
    (make_request(""), "`prompt`"),
    (make_request("   "), "`prompt`"),
    (make_request("What is 1 + 1?", max_new_tokens=100_000), "`max_new_tokens`"),
    (make_request("What is 1 + 1?", force_tier="medium"), "`force_tier`"),
    (make_request("What is 1 + 1?", threshold=float("nan")), "`threshold`"),
    (make_request("What is 1 + 1?", messages=[{"role": "user", "content": "hi"}]), "`prompt` or `messages`"),
    (make_request(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role"),
    (
        make_request(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]),
        "last of `messages`",
    ),
    (make_request("x" * (CFG.limits.max_prompt_chars + 1)), "limit"),
]


@pytest.mark.parametrize("req,field", BAD, ids=[f for _, f in BAD])
def test_bad_requests_get_invalid_argument_naming_the_field(client, req, field):
    with pytest.raises(grpc.RpcError) as e:
        client.generate(req)
    assert e.value.code() == INVALID and field in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        list(client.stream(req))
    assert e.value.code() == INVALID and field in e.value.details()


def test_service_still_answers_after_bad_requests(client, cases):
    for req, _ in BAD:
        with pytest.raises(grpc.RpcError):
            client.generate(req)
    r = client.generate(make_request(cases["easy"].prompt))
    assert r.text == cases["easy"].reference


def _grpcurl(address, body, *flags):
    exe = shutil.which("grpcurl", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if exe is None:
        pytest.skip("grpcurl is not installed (the dev extra installs it on Linux x86_64)")
    cmd = [
        exe,
        "-plaintext",
        *flags,
        "-import-path",
        str(ROOT / "protos"),
        "-proto",
        "cascade/v1/cascade.proto",
        "-d",
        json.dumps(body),
        address,
        "cascade.v1.Cascade/Generate",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_grpcurl_a_client_that_is_not_ours(address, cases):
    out = _grpcurl(address, {"prompt": cases["hard"].prompt}, "-emit-defaults")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["text"] == cases["hard"].reference and body["tier"] == "strong" and body["deferred"] is True
    assert isinstance(body["score"], float) and body["score"] < body["threshold"]
    bad = _grpcurl(address, {"prompt": ""})
    assert bad.returncode != 0 and "InvalidArgument" in bad.stderr and "`prompt`" in bad.stderr


def _status(server) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "serving.ops.cli", "status", "--ray-address", server.ray_address, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_concurrent_streams_and_unary_calls_finish_without_thread_growth(server, cases):
    """20 GenerateStream + 20 Generate at once: all finish with the right text, and the tiers' replicas
    hold no more threads afterwards (no thread per stream). Engine stats show up in `cascade status`."""
    import asyncio

    from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc

    before = _status(server)["router"]["engines"]
    prompts = [cases["easy"].prompt, cases["hard"].prompt] * 10

    async def run():
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = pb_grpc.CascadeStub(ch)

            async def stream(p):
                msgs = [m async for m in stub.GenerateStream(make_request(p), timeout=60)]
                return "".join(m.text for m in msgs[:-1]), msgs[-1]

            async def unary(p):
                r = await stub.Generate(make_request(p), timeout=60)
                return r.text, r

            return await asyncio.gather(*(stream(p) for p in prompts), *(unary(p) for p in prompts))

    results = asyncio.run(run())
    want = {cases["easy"].prompt: cases["easy"].reference, cases["hard"].prompt: cases["hard"].reference}
    assert [text for text, _ in results] == [want[p] for p in prompts + prompts]
    assert all(
        r.tier == ("weak" if p == cases["easy"].prompt else "strong") for (_, r), p in zip(results, prompts + prompts)
    )
    after = _status(server)["router"]["engines"]
    for tier in ("weak", "strong"):
        print(
            f"tier {tier}: threads before {before[tier]['threads']}, after {after[tier]['threads']}; "
            f"engine {after[tier]['engine']}, {after[tier]['requests']} requests"
        )
        assert after[tier]["engine"] == "continuous" and after[tier]["requests"] > before[tier]["requests"]
        if after[tier]["replica"] == before[tier]["replica"]:
            assert after[tier]["threads"] <= before[tier]["threads"]
