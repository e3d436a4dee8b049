"""The fronts' mappings (serving/fronts/): wire format -> CascadeRequest, outcome -> wire format, errors ->
statuses. Pure: no Ray, no servers."""

import json
import math
from dataclasses import replace

import pytest

from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving.config import Limits
from serving.core.decoding import Decoding
from serving.core.errors import BadRequest, Overloaded, RequestRefused, TierFailure, Unauthenticated
from serving.core.receipt import Receipt
from serving.core.request import CascadeRequest, Outcome, TierRun
from serving.core.types import Generation
from serving.fronts import grpc_api, openai_api
from serving.fronts.outcome import CascadeResponse, merged
from serving.fronts.status import retry_after_ms, status_of

TIERS = ["weak", "strong"]
LIMITS = Limits(max_new_tokens=64, max_prompt_chars=100, max_messages=3)


def grpc_req(**kw):
    return grpc_api.to_request(pb.GenerateRequest(**kw), tier_names=TIERS, limits=LIMITS, embed=False, stream=False)


def chat(raw: dict):
    body = openai_api.parse(openai_api.ChatRequest, json.dumps({"model": "cascade", **raw}).encode())
    call = openai_api.to_call(body, cascade_name="cascade", tier_names=TIERS, limits=LIMITS, embed=False)
    return body, call.requests[0]


def test_grpc_request_maps_to_the_walks_request():
    r = grpc_req(prompt="What is 1 + 2?", max_new_tokens=8, threshold=-0.5, include_logprobs=True)
    assert (r.request.prompt, r.request.max_new_tokens, r.threshold, r.include_logprobs) == (
        "What is 1 + 2?",
        8,
        -0.5,
        True,
    )
    assert (r.tiers, r.forced, r.stream) == (TIERS, False, False)
    r = grpc_req(messages=[pb.Message(role="user", content="hi")], force_tier="strong")
    assert (r.request.messages, r.tiers, r.forced, r.threshold, r.request.max_new_tokens) == (
        [{"role": "user", "content": "hi"}],
        ["strong"],
        True,
        None,
        None,
    )


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(prompt=""), "`prompt`"),
        (dict(prompt="x", max_new_tokens=65), "`max_new_tokens` must be between 1 and 64"),
        (dict(prompt="x", force_tier="medium"), "`force_tier` 'medium' is not a tier"),
        (dict(prompt="x", threshold=math.nan), "`threshold` must be a finite number"),
        (dict(prompt="x" * 101), "`prompt` is 101 characters; the limit is 100"),
        (dict(messages=[pb.Message(role="robot", content="hi")]), "`messages[0].role` must be one of"),
        (dict(messages=[pb.Message(role="user", content="a")] * 4), "`messages` has 4 entries"),
        (
            dict(messages=[pb.Message(role="user", content="a"), pb.Message(role="assistant", content="b")]),
            "the last of `messages`",
        ),
    ],
)
def test_grpc_bad_requests_name_the_proto_field(kw, field):
    with pytest.raises(BadRequest) as e:
        grpc_req(**kw)
    code, details, trailing = grpc_api.error(e.value, None)
    assert code == "INVALID_ARGUMENT" and field in details and trailing == []


def test_malformed_bytes_are_a_bad_request():
    bad = grpc_api.parse_request(b"\xff\xff\xff")
    assert isinstance(bad, grpc_api.MalformedRequest)
    with pytest.raises(BadRequest, match="not a valid cascade.v1.GenerateRequest"):
        grpc_api.to_request(bad, tier_names=TIERS, limits=LIMITS, embed=False, stream=False)


def test_one_status_table_for_both_fronts():
    cases = [
        (BadRequest("no"), "INVALID_ARGUMENT", 400),
        (Unauthenticated("who"), "UNAUTHENTICATED", 401),
        (Overloaded("busy", 250), "RESOURCE_EXHAUSTED", 429),
        (TierFailure("strong", "overloaded", "queue full"), "RESOURCE_EXHAUSTED", 429),
        (TierFailure("strong", "timeout", "slow"), "UNAVAILABLE", 504),
        (TierFailure("strong", "unavailable", "gone"), "UNAVAILABLE", 503),
        (TierFailure("strong", "not_ready", "no running replica"), "UNAVAILABLE", 503),
        (RequestRefused("too_large", "big", "content-length"), "RESOURCE_EXHAUSTED", 413),
        (RequestRefused("body_timeout", "slow"), "DEADLINE_EXCEEDED", 408),
        (RequestRefused("media_type", "not JSON", "content-type"), "INVALID_ARGUMENT", 415),
        (RequestRefused("not_found", "no route"), "UNIMPLEMENTED", 404),
        (RequestRefused("method", "GET"), "UNIMPLEMENTED", 405),
        (RuntimeError("bug"), "INTERNAL", 500),
    ]
    for e, code, http in cases:
        assert (status_of(e).grpc, status_of(e).http) == (code, http)
        assert grpc_api.error(e, None)[0] == code and openai_api.error(e)[0] == http
    code, details, trailing = grpc_api.error(TierFailure("strong", "overloaded", "queue full"), 500)
    assert "retry after 500 ms" in details and trailing == [("retry-after-ms", "500")]
    # a tier with no running replica (starting, scaled to zero) is refused at once, with a hint to come back
    assert retry_after_ms(TierFailure("strong", "not_ready", "none"), 500) == 500
    assert retry_after_ms(TierFailure("strong", "timeout", "slow"), 500) is None
    status, payload = openai_api.error(RequestRefused("too_large", "is over the limit", "content-length"))
    assert status == 413 and payload.render()["error"]["param"] == "content-length"
    assert set(payload.render()["error"]) == {"message", "type", "param", "code"}


def test_openai_chat_maps_to_the_walks_request():
    body, r = chat(
        {
            "model": "cascade:weak",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_tokens": 5,
            "cascade": {"threshold": -1.0},
            "user": "ignored-by-design",
        }
    )
    assert (r.request.messages, r.request.max_new_tokens, r.tiers, r.forced, r.threshold) == (
        [{"role": "user", "content": "hi"}],
        5,
        ["weak"],
        True,
        -1.0,
    )
    body = openai_api.parse(openai_api.CompletionRequest, b'{"model": "cascade", "prompt": ["one"], "stream": true}')
    r = openai_api.to_call(body, cascade_name="cascade", tier_names=TIERS, limits=LIMITS, embed=True).requests[0]
    assert (r.request.prompt, r.stream, r.request.embed, r.forced) == ("one", True, True, False)


@pytest.mark.parametrize(
    "raw,param",
    [
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}, "max_tokens"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "hi"}], "cascade": {"threshold": "high"}}, "cascade.threshold"),
        ({"messages": [{"role": "user", "content": "hi"}], "cascade": {"force_tier": "medium"}}, "cascade.force_tier"),
        ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}, "model"),
        ({"messages": [{"role": "user", "content": "x" * 101}]}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 2.5}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_k": -2}, "top_k"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a"] * 9}, "stop"),
        ({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"x": 1}}, "logit_bias"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 9}, "n"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}},
            "response_format",
        ),
        ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}, "frobnicate"),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages[0].name"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": True, "x": 1}},
            "stream_options",
        ),
    ],
)
def test_openai_bad_requests_name_the_api_field(raw, param):
    with pytest.raises(BadRequest) as e:
        body = openai_api.parse(openai_api.ChatRequest, json.dumps({"model": "cascade", **raw}).encode())
        openai_api.to_call(body, cascade_name="cascade", tier_names=TIERS, limits=LIMITS, embed=False)
    status, payload = openai_api.error(e.value, locals().get("body"))
    payload = payload.render()
    assert status == 400 and payload["error"]["param"] == param and f"`{param}`" in payload["error"]["message"]
    assert payload["error"]["type"] == "invalid_request_error"


def test_not_json_is_400():
    for raw in (b"{", b"[1]", b""):
        with pytest.raises(BadRequest):
            openai_api.parse(openai_api.ChatRequest, raw)


OK_BODY = '"model": "cascade", "messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    "raw,param,says",
    [
        (b'{"model": "cascade", "messages": [{"role": "user", "content": "\xff"}]}', None, "not UTF-8: byte 63"),
        (b"\xef\xbb\xbf{" + OK_BODY.encode() + b"}", None, "BOM"),
        ('{"x": 1}'.encode("utf-16"), None, "not UTF-8"),
        (("{" + OK_BODY + ', "model": "other"}').encode(), "model", "appears twice"),
        (b'{"model": "cascade", "messages": [{"role": "user", "role": "user", "content": "hi"}]}', "role", "twice"),
        (b"[" * 5000 + b"]" * 5000, None, "nests deeper than 32"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, None, "nests deeper than 32"),
        (("{" + OK_BODY + ', "metadata": ' + "[" * 40 + "]" * 40 + "}").encode(), "metadata" + "[0]" * 31, "deeper"),
        (
            b'{"model": "cascade", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
            "messages[0].content",
            "surrogate",
        ),
        (("{" + OK_BODY + ', "stop": ["\\udfff"]}').encode(), "stop[0]", "lone surrogate"),
        (("{" + OK_BODY + ', "metadata": {"\\ud800": 1}}').encode(), "metadata", "lone surrogate"),
        (b'{"model": "cascade", "max_tokens": 1' + b"0" * 5000 + b"}", None, "4300 digits"),
        (b"3", None, "got a number"),
        (b'"hi"', None, "got a string"),
        (b"null", None, "got null"),
        (b'{"model": "cascade", "messages": [1]}', "messages[0]", "dictionary"),
        (b'{"model": "cascade", "prompt": [[1, 2]]}', "prompt", "string"),
    ],
)
def test_hostile_bodies_are_400_naming_what_is_wrong(raw, param, says):
    kind = openai_api.CompletionRequest if b'"prompt"' in raw else openai_api.ChatRequest
    with pytest.raises(BadRequest) as e:
        openai_api.parse(kind, raw)
    status, payload = openai_api.error(e.value)
    payload = payload.render()
    assert status == 400 and payload["error"]["param"] == param and says in payload["error"]["message"]


@pytest.mark.parametrize(
    "raw,param",
    [
        ({"stream_options": {"include_usage": "no"}}, "stream_options.include_usage"),
        ({"stream_options": {"continuous_usage_stats": 1}}, "stream_options.continuous_usage_stats"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
    ],
)
def test_values_of_the_wrong_type_are_refused_not_coerced(raw, param):
    with pytest.raises(BadRequest) as e:
        body = openai_api.parse(
            openai_api.ChatRequest,
            json.dumps({"model": "cascade", "messages": [{"role": "user", "content": "hi"}], **raw}).encode(),
        )
        openai_api.to_call(body, cascade_name="cascade", tier_names=TIERS, limits=LIMITS, embed=False)
    assert openai_api.error(e.value)[1].render()["error"]["param"] == param


@pytest.mark.parametrize(
    "value,ok",
    [
        (None, True),
        ("application/json", True),
        ("Application/JSON; charset=UTF-8", True),
        ('application/json; charset="utf-8"', True),
        ("application/json; charset=latin-1", False),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("", False),
    ],
)
def test_content_type_is_json_or_refused_with_415(value, ok):
    if ok:
        openai_api.check_content_type(value)
        return
    with pytest.raises(RequestRefused) as e:
        openai_api.check_content_type(value)
    status, payload = openai_api.error(e.value)
    assert status == 415 and payload.render()["error"]["param"] == "content-type"


def outcome(score=-0.2):
    weak = Generation("42", [1, 2], [-0.1, -0.2], 3, "stop")
    receipt = Receipt([], 0.0, "strong", 0.0, 3, 2, True)
    return Outcome(weak, "weak", False, score, None, [TierRun("weak", weak, score, 12.0, 2, False)], receipt=receipt)


def response(req, out, **kw):
    return CascadeResponse.of(req, out, **{"rule": "chow_sum", "default_threshold": -0.3, "latency_ms": 1.0, **kw})


def test_both_fronts_say_the_same_about_an_answer():
    req = CascadeRequest.build(prompt="q", tier_names=TIERS, limits=LIMITS, include_logprobs=True)
    resp = CascadeResponse.of(
        req, outcome(), rule="chow_quantile", default_threshold=-0.3, latency_ms=20.0, request_id="r1"
    )
    msg = grpc_api.to_response(resp)
    assert (msg.text, msg.tier, msg.threshold, msg.usage.completion_tokens, list(msg.tiers[0].token_logprobs)) == (
        "42",
        "weak",
        -0.3,
        2,
        [-0.1, -0.2],
    )
    body = openai_api.parse(openai_api.ChatRequest, b'{"model": "cascade", "messages": []}')
    call = openai_api.Call(body, [req])
    c = openai_api.completion(call, [outcome()], merged([resp])).render()
    assert c["choices"][0]["message"]["content"] == "42" and c["usage"]["total_tokens"] == 5
    assert c["cascade"]["tier"] == msg.tier and c["cascade"]["tiers"][0]["decision_tokens"] == 2
    json.dumps(c, allow_nan=False)  # what the HTTP response writes
    nan = CascadeResponse.of(
        req, outcome(math.nan), rule="chow_quantile", default_threshold=-0.3, latency_ms=1.0, request_id="r2"
    )
    nan.tiers[0].score = None
    info = openai_api.cascade_info(nan)
    assert info["score"] == "NaN" and "score" not in info["tiers"][0]  # protobuf's JSON mapping of NaN / unset
    event = openai_api.sse(call, "r1", [openai_api.sse_final(call, 0, outcome())], cascade=info)
    assert event.startswith(b"data: ") and json.loads(event[6:])["choices"][0]["finish_reason"] == "stop"


def test_n_answers_report_the_first_with_usage_and_receipt_summed():
    req = CascadeRequest.build(prompt="q", tier_names=TIERS, limits=LIMITS)
    one = response(req, outcome(), request_id="r")
    both = merged([one, response(req, outcome(-0.4), request_id="r")])
    msg = grpc_api.to_response(both)
    assert (msg.usage.prompt_tokens, msg.usage.completion_tokens, msg.score, len(msg.choices)) == (6, 4, -0.2, 2)
    assert msg.receipt.strong_only_prompt_tokens == 6 and msg.receipt.strong_only_estimated
    assert [c.score for c in msg.choices] == [-0.2, -0.4] and not msg.choices[0].choices
    info = openai_api.cascade_info(both)
    assert info["usage"] == {"prompt_tokens": 6, "completion_tokens": 4} and len(info["choices"]) == 2
    assert merged([one]) is one and "choices" not in openai_api.cascade_info(one)


def test_both_fronts_say_which_signal_decided_and_what_the_judge_did():
    from serving.core.request import JudgeRun

    req = CascadeRequest.build(prompt="q", tier_names=TIERS, limits=LIMITS)
    out = outcome()
    out.runs[0].judge = JudgeRun("judge", "meta_ranking", 0.12, 0.05, 80.0, 5, 400, "", (-1.0, math.inf))
    resp = response(req, out, request_id="r")
    msg = grpc_api.to_response(resp)
    assert msg.decided_by == "judge" and msg.HasField("judgement")
    j = msg.judgement
    assert (j.judge, j.method, j.comparisons, j.fallback, j.window_low, j.window_high) == (
        "judge",
        "meta_ranking",
        5,
        "",
        -1.0,
        math.inf,
    )
    assert j.score == pytest.approx(0.12) and j.threshold == pytest.approx(0.05)
    info = openai_api.cascade_info(resp)
    assert info["decided_by"] == "judge" and info["judgement"]["window_high"] == "Infinity"
    json.dumps(info, allow_nan=False)
    out.runs[0].judge = JudgeRun("judge", "pointwise", math.nan, 0.5, 10001.0, 1, 0, "timeout")
    resp = response(req, out, request_id="r")
    msg = grpc_api.to_response(resp)
    assert msg.decided_by == "rule" and msg.judgement.fallback == "timeout" and math.isnan(msg.judgement.score)
    assert openai_api.cascade_info(resp)["judgement"]["score"] == "NaN"
    out.runs[0].judge = None
    resp = response(req, out, request_id="r")
    msg = grpc_api.to_response(resp)
    assert msg.decided_by == "rule" and not msg.HasField("judgement")
    assert "judgement" not in openai_api.cascade_info(resp)


def test_decoding_fields_map_from_both_fronts():
    _, r = chat(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 5,
            "seed": 3,
            "stop": "\n",
            "stop_token_ids": [2],
            "min_tokens": 1,
            "ignore_eos": True,
            "repetition_penalty": 1.1,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "logit_bias": {"7": 2.0},
            "logprobs": True,
            "top_logprobs": 2,
        }
    )
    d = r.request.decoding
    assert (d.temperature, d.top_p, d.top_k, d.seed, d.stop, d.stop_token_ids, d.min_tokens, d.ignore_eos) == (
        0.7,
        0.9,
        5,
        3,
        ["\n"],
        [2],
        1,
        True,
    )
    assert (d.repetition_penalty, d.presence_penalty, d.frequency_penalty, d.logit_bias, d.top_logprobs) == (
        1.1,
        0.5,
        -0.5,
        {7: 2.0},
        2,
    )
    g = grpc_req(
        prompt="x", decoding=pb.Decoding(temperature=0.7, seed=3, stop=["\n"], logit_bias={7: 2.0}, top_logprobs=2)
    )
    assert g.request.decoding == replace(
        d,
        top_p=1.0,
        top_k=0,
        stop_token_ids=[],
        min_tokens=0,
        ignore_eos=False,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
    )
    assert grpc_req(prompt="x").request.decoding == Decoding()  # unset: greedy, as before
    with pytest.raises(BadRequest) as e:
        grpc_req(prompt="x", decoding=pb.Decoding(temperature=-1))
    assert "`decoding.temperature`" in grpc_api.error(e.value, None)[1]


def test_n_answers_are_walks_of_their_own_with_their_own_seeds():
    body = openai_api.parse(
        openai_api.CompletionRequest,
        b'{"model": "cascade", "prompt": ["a", "b"], "n": 2, "seed": 10, "temperature": 1}',
    )
    call = openai_api.to_call(body, cascade_name="cascade", tier_names=TIERS, limits=LIMITS, embed=False)
    assert [(r.request.prompt, r.request.decoding.seed) for r in call.requests] == [
        ("a", 10),
        ("a", 11),
        ("b", 10),
        ("b", 11),
    ]
    reqs = grpc_api.to_requests(
        pb.GenerateRequest(prompt="x", n=3), tier_names=TIERS, limits=LIMITS, embed=False, stream=False
    )
    assert len(reqs) == 3 and all(r.request.decoding.seed is None for r in reqs)
    with pytest.raises(BadRequest, match="GenerateStream"):
        grpc_api.to_requests(
            pb.GenerateRequest(prompt="x", n=2), tier_names=TIERS, limits=LIMITS, embed=False, stream=True
        )


def test_echo_with_logprobs_needs_one_tier():
    body = openai_api.parse(
        openai_api.CompletionRequest, b'{"model": "cascade", "prompt": "a", "echo": true, "logprobs": 1}'
    )
    with pytest.raises(BadRequest) as e:
        openai_api.to_call(body, cascade_name="cascade", tier_names=TIERS, limits=LIMITS, embed=False)
    assert e.value.field == "echo"
    body = openai_api.parse(
        openai_api.CompletionRequest, b'{"model": "cascade:weak", "prompt": "a", "echo": true, "logprobs": 1}'
    )
    call = openai_api.to_call(body, cascade_name="cascade", tier_names=TIERS, limits=LIMITS, embed=False)
    assert call.echo and call.logprobs and call.requests[0].request.decoding.top_logprobs == 1


def test_openai_logprobs_shapes():
    texts, lps = ["4", "2"], [-0.1, -0.2]
    tops = [[(4, -0.1, "4"), (5, -2.5, "5")], [(2, -0.2, "2"), (3, -1.9, "3")]]
    chat_lp = openai_api.chat_logprobs(texts, lps, tops).render()
    assert chat_lp["content"][0] == {
        "token": "4",
        "logprob": -0.1,
        "bytes": [52],
        "top_logprobs": [
            {"token": "4", "logprob": -0.1, "bytes": [52]},
            {"token": "5", "logprob": -2.5, "bytes": [53]},
        ],
    }
    comp = openai_api.completion_logprobs(texts, lps, tops, offset=3).render()
    assert comp == {
        "tokens": ["4", "2"],
        "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [{"4": -0.1, "5": -2.5}, {"2": -0.2, "3": -1.9}],
        "text_offset": [3, 4],
    }
