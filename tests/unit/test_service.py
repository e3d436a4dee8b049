"""The cascade service (serving/fronts/service.py) and the fronts' handlers over it (``grpc_api.generate``,
``http.complete``), with the walk's fake tiers: gates, n > 1 walks side by side, the records, the HTTP body's
limits and the Server-Sent Events. No Ray, no grpc server, no web framework."""

import asyncio
import hashlib
import json
import math
from contextlib import aclosing

import pytest

from serving.config import Limits
from serving.core.errors import Overloaded, TierFailure, Unauthenticated
from serving.core.request import CascadeRequest, Outcome, Text
from serving.core.walk import Cascade
from serving.fronts import grpc_api, http, openai_api
from serving.fronts.service import CascadeService
from tests.unit.test_cascade import STRONG, SURE, UNSURE, FakeTiers, Recorder, config

TOKEN = "s3cret"
CHAT = openai_api.ChatRequest
COMPLETION = openai_api.CompletionRequest


class Shadow:
    def __init__(self):
        self.offered = []

    def offer(self, req, out):
        self.offered.append(out.answered_by)


def service(answers=None, errors=None, digests=(), **limits):
    tiers = FakeTiers(answers or {"weak": SURE, "strong": STRONG}, errors)
    metrics = Recorder()
    cascade = Cascade(config(), tiers, metrics)
    svc = CascadeService(
        cascade,
        name="cascade",
        limits=Limits(**limits),
        digests=list(digests),
        metrics=metrics,
        shadow=Shadow(),
        request_id=lambda: "rid",
    )
    return svc, tiers, metrics


def reqs(svc, n=1, prompt="q"):
    first = CascadeRequest.build(prompt=prompt, tier_names=svc.cascade.names, limits=svc.limits)
    return [first] + [first.variant(k) for k in range(1, n)]


async def body(*parts: bytes, delay: float = 0.0):
    for p in parts:
        await asyncio.sleep(delay)
        yield p


def post(svc, raw: dict, kind=CHAT, headers=None):
    data = json.dumps(raw).encode()
    return asyncio.run(http.complete(svc, kind, "ChatCompletions", headers or {}, body(data)))


def events(reply) -> list[bytes]:
    async def read():
        return [e async for e in reply.events]

    return asyncio.run(read())


MESSAGES = [{"role": "user", "content": "q"}]


def test_the_gate_checks_the_bearer_token_then_admission():
    svc, *_ = service(digests=[hashlib.sha256(TOKEN.encode()).digest()], max_inflight=1)
    svc.gate(f"Bearer {TOKEN}", "how")
    svc.gate(f"bearer  {TOKEN} ", "how")  # the scheme in any case, the token stripped
    for bad in ("", TOKEN, f"Basic {TOKEN}", "Bearer other"):
        with pytest.raises(Unauthenticated, match="send how"):
            svc.gate(bad, "how")
    svc.enter(), svc.enter()
    with pytest.raises(Overloaded) as e:
        svc.gate(f"Bearer {TOKEN}", "how")
    assert e.value.retry_after_ms == 500 and svc.retry_after_ms(e.value) == 500
    svc.exit(), svc.exit()
    assert svc.inflight == 0 and service()[0].authorized("")  # no digests: auth is off


def test_n_answers_are_walked_side_by_side():
    svc, tiers, _ = service({"weak": UNSURE, "strong": STRONG})
    outs = asyncio.run(svc.run_all(reqs(svc, 3)))
    assert [o.answered_by for o in outs] == ["strong"] * 3 and tiers.calls.count("weak") == 3


def test_the_events_of_n_walks_are_merged_as_they_come():
    svc, *_ = service({"weak": UNSURE, "strong": STRONG})

    async def read():
        async with aclosing(svc.events(reqs(svc, 2))) as evs:
            return [(i, ev) async for i, ev in evs]

    got = asyncio.run(read())
    for i in (0, 1):
        mine = [ev for j, ev in got if j == i]
        assert "".join(ev.text for ev in mine if isinstance(ev, Text)) == "439"
        assert isinstance(mine[-1], Outcome) and mine[-1].answered_by == "strong"
    assert {i for i, _ in got[:4]} == {0, 1}  # interleaved, not one walk after the other


class FailsOnPrompt(FakeTiers):
    """The tier refuses to work for the prompt "fail" (a first tier's failure fails the walk)."""

    async def stream(self, tier, req, tokens=True, stop=None, draft=None):
        if req.prompt == "fail":
            raise TierFailure(tier, "error", "boom")
        async for chunk in super().stream(tier, req, tokens, stop, draft):
            yield chunk


def test_a_failing_walk_of_n_fails_the_reader_and_cancels_the_others():
    svc, *_ = service()
    tiers = svc.cascade.client = FailsOnPrompt({"weak": [("1", -0.01)] * 50, "strong": STRONG})
    both = reqs(svc, prompt="ok") + reqs(svc, prompt="fail")

    async def read():
        async with aclosing(svc.events(both)) as evs:
            return [ev async for _, ev in evs]

    with pytest.raises(TierFailure, match="boom"):
        asyncio.run(read())
    assert tiers.calls == ["weak"] and tiers.closed_early == ["weak"]  # the other walk's tier call, cancelled


def test_records_answers_refusals_and_cancellations():
    svc, _, m = service({"weak": UNSURE, "strong": STRONG})
    [req] = reqs(svc)
    t0 = svc.enter()
    out = asyncio.run(svc.cascade.run(req))
    svc.answered("Generate", req, out, t0)
    assert svc.counts == {"OK": 1} and svc.recent.share == 1.0 and svc.shadow.offered == ["strong"]
    assert m.counts[("cascade_requests", (("code", "OK"), ("method", "Generate"), ("tier", "strong")))] == 1
    assert svc.refused("Generate", Unauthenticated("no token"), t0) == "no token"
    assert m.counts[("cascade_rejections", (("reason", "unauthenticated"),))] == 1
    assert svc.refused("Generate", KeyError("x"), t0) == "internal error (KeyError); request id rid"
    svc.cancelled("Generate", t0)
    assert svc.counts == {"OK": 1, "UNAUTHENTICATED": 1, "INTERNAL": 1, "CANCELLED": 1}
    r = svc.response(req, out, t0)
    assert (r.text, r.tier, r.deferred, r.rule, r.request_id, r.usage.completion_tokens) == (
        "439",
        "strong",
        True,
        "chow_quantile",
        "rid",
        5,
    )


class Context:
    def __init__(self, token=""):
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.code = self.details = self.trailing = None

    def invocation_metadata(self):
        return self.metadata

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details

    def set_trailing_metadata(self, trailing):
        self.trailing = trailing


class Codes:
    def __getattr__(self, name):
        return name


def test_grpc_generate_and_generate_stream_over_the_service():
    svc, *_ = service({"weak": UNSURE, "strong": STRONG})
    msg = asyncio.run(grpc_api.generate(svc, grpc_api.pb.GenerateRequest(prompt="q", n=2), Context(), Codes()))
    assert (msg.text, msg.tier, msg.usage.completion_tokens, len(msg.choices)) == ("439", "strong", 10, 2)

    async def stream():
        gen = grpc_api.generate_stream(svc, grpc_api.pb.GenerateRequest(prompt="q"), Context(), Codes())
        return [m async for m in gen]

    msgs = asyncio.run(stream())
    assert "".join(m.text for m in msgs) == "439" and msgs[-1].finished and msgs[-1].tier == "strong"
    assert svc.counts == {"OK": 3} and svc.inflight == 0


def test_grpc_errors_set_the_status_on_the_context():
    svc, *_ = service(digests=[hashlib.sha256(TOKEN.encode()).digest()])
    ctx = Context("wrong")
    msg = asyncio.run(grpc_api.generate(svc, grpc_api.pb.GenerateRequest(prompt="q"), ctx, Codes()))
    assert msg == grpc_api.pb.GenerateResponse() and ctx.code == "UNAUTHENTICATED"
    svc, *_ = service({"weak": UNSURE, "strong": STRONG}, {"strong": TierFailure("strong", "overloaded", "queue full")})
    svc.cascade.cfg.reliability.on_tier_failure = "fail"
    ctx = Context()
    asyncio.run(grpc_api.generate(svc, grpc_api.pb.GenerateRequest(prompt="q"), ctx, Codes()))
    assert ctx.code == "RESOURCE_EXHAUSTED" and "retry after 500 ms" in ctx.details
    assert ctx.trailing == [("retry-after-ms", "500")] and svc.inflight == 0


def test_http_unary_answers_are_openai_json():
    svc, *_ = service({"weak": UNSURE, "strong": STRONG})
    reply = post(svc, {"model": "cascade", "messages": MESSAGES, "n": 2})
    out = reply.json()
    assert reply.status == 200 and out["object"] == "chat.completion"
    assert [c["message"]["content"] for c in out["choices"]] == ["439", "439"]
    assert out["usage"] == {"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12}
    assert out["cascade"]["tier"] == "strong" and len(out["cascade"]["choices"]) == 2
    assert svc.inflight == 0 and svc.counts == {"OK": 2}


def test_http_streams_are_server_sent_events_ending_with_done():
    svc, *_ = service({"weak": UNSURE, "strong": STRONG})
    raw = {"model": "cascade", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    reply = post(svc, raw)
    assert isinstance(reply, http.EventStream) and svc.inflight == 1  # the stream holds the slot
    evs = events(reply)
    assert evs[-1] == b"data: [DONE]\n\n" and svc.inflight == 0
    chunks = [json.loads(e[6:]) for e in evs[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2]) == "439"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["cascade"]["tier"] == "strong"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_http_stream_that_fails_ends_with_an_error_event():
    svc, *_ = service({"weak": UNSURE, "strong": STRONG}, {"strong": TierFailure("strong", "error", "boom")})
    svc.cascade.cfg.reliability.on_tier_failure = "fail"
    evs = events(post(svc, {"model": "cascade", "prompt": "q", "stream": True}, COMPLETION))
    assert json.loads(evs[-1][6:])["error"]["code"] == "unavailable" and svc.inflight == 0


def test_http_bodies_over_the_limit_or_too_slow_are_refused():
    svc, *_ = service(max_request_bytes=1024, http_body_timeout_s=0.05)
    reply = asyncio.run(http.complete(svc, CHAT, "ChatCompletions", {"content-length": "2048"}, body(b"")))
    assert reply.status == 413 and reply.json()["error"]["param"] == "content-length"
    reply = asyncio.run(http.complete(svc, CHAT, "ChatCompletions", {}, body(b"x" * 600, b"x" * 600)))
    assert reply.status == 413 and "limits.max_request_bytes" in reply.json()["error"]["message"]
    reply = asyncio.run(http.complete(svc, CHAT, "ChatCompletions", {}, body(b"{", b"}", delay=0.1)))
    assert reply.status == 408 and "limits.http_body_timeout_s" in reply.json()["error"]["message"]
    reply = asyncio.run(http.complete(svc, CHAT, "ChatCompletions", {"content-type": "text/plain"}, body(b"{}")))
    assert reply.status == 415
    assert svc.inflight == 0 and svc.counts == {"RESOURCE_EXHAUSTED": 2, "DEADLINE_EXCEEDED": 1, "INVALID_ARGUMENT": 1}


def test_http_refusals_carry_a_retry_hint_and_models_need_the_token():
    svc, *_ = service(digests=[hashlib.sha256(TOKEN.encode()).digest()], max_inflight=1, retry_after_ms=1500)
    assert http.models(svc, {}).status == 401
    listed = http.models(svc, {"authorization": f"Bearer {TOKEN}"}).json()
    assert [m["id"] for m in listed["data"]] == ["cascade", "cascade:weak", "cascade:strong"]
    svc.enter(), svc.enter()
    reply = post(svc, {"model": "cascade", "messages": MESSAGES}, headers={"authorization": f"Bearer {TOKEN}"})
    assert reply.status == 429 and reply.headers == {"Retry-After": "2"}
    assert http.no_route(405, "GET", "/v1/completions", "Method Not Allowed").status == 405
    assert math.isfinite(svc.enter())


def test_a_stream_closed_at_a_yield_counts_as_cancelled_on_both_fronts():
    """A hang-up reaches a stream either as CancelledError while it awaits or as GeneratorExit while it is
    suspended at a ``yield`` (the consumer closes it): both are the client cancelling, counted as such."""
    svc, *_ = service({"weak": UNSURE, "strong": STRONG})

    async def first_then_close(gen):
        first = await gen.__anext__()
        await gen.aclose()  # GeneratorExit at the yield that produced `first`
        return first

    msg = asyncio.run(
        first_then_close(grpc_api.generate_stream(svc, grpc_api.pb.GenerateRequest(prompt="q"), Context(), Codes()))
    )
    assert msg.text and not msg.finished
    assert svc.counts == {"CANCELLED": 1} and svc.inflight == 0
    reply = post(svc, {"model": "cascade", "messages": MESSAGES, "stream": True})
    assert asyncio.run(first_then_close(reply.events)).startswith(b"data: ")
    assert svc.counts == {"CANCELLED": 2} and svc.inflight == 0
