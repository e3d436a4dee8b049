"""Hostile input, auth, overload, metrics and operability against a real `cascade serve` (auth on,
a small admission limit), over real gRPC."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import statistics
import subprocess
import sys
import urllib.request
from collections import Counter

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving.config import TOY_CONFIG, load_config
from serving.ops.client import CascadeClient, make_request
from serving.ops.loadgen import run_load
from serving.ops.local import cascade_server, wait_for

pytestmark = pytest.mark.integration
TOKEN = "test-token-7c1e4f"
CFG = load_config(TOY_CONFIG)
CFG.server.auth.token_sha256 = [hashlib.sha256(TOKEN.encode()).hexdigest()]
CFG.limits.max_inflight = 6
for opts in [CFG.router] + [t.serve for t in CFG.tiers]:  # fixed sizes: the overload test measures one replica each
    opts.autoscaling_config, opts.num_replicas = None, 1
AUTH = [("authorization", f"Bearer {TOKEN}")]
C = grpc.StatusCode
FLOOD = [f"What is {a} + {b}?" for a in range(10, 99, 7) for b in range(100, 999, 97)]  # prompts for overload


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with cascade_server(CFG, tmp_path_factory.mktemp("hardening")) as s:
        yield s


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def client(server):
    with CascadeClient(server.address, timeout=60, token=TOKEN) as c:
        yield c


def _call(channel, data: bytes, method: str = "Generate", metadata=AUTH, timeout: float = 60):
    """Sends raw bytes; returns (status, details)."""
    if method == "Generate":
        rpc = channel.unary_unary(f"/cascade.v1.Cascade/{method}")
        try:
            rpc(data, metadata=metadata, timeout=timeout)
            return C.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details()
    rpc = channel.unary_stream(f"/cascade.v1.Cascade/{method}")
    try:
        for _ in rpc(data, metadata=metadata, timeout=timeout):
            pass
        return C.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


def _check(status, details):
    assert status in (C.OK, C.INVALID_ARGUMENT), f"{status.name}: {details}"
    assert "Traceback" not in details and 'File "' not in details
    if status == C.INVALID_ARGUMENT:
        assert details and len(details) < 500


# ---- hostile input -----------------------------------------------------------------------------
text = st.text(st.characters(codec="utf-8"), max_size=40)
messages = st.lists(
    st.builds(pb.Message, role=st.sampled_from(["user", "assistant", "system", "", "robot", "USER"]), content=text),
    max_size=4,
)
requests = st.builds(
    pb.GenerateRequest,
    prompt=st.one_of(text, st.just(""), st.just(" \n\t"), st.text(max_size=3).map(lambda t: t * 7000)),
    messages=messages,
    max_new_tokens=st.one_of(st.just(0), st.integers(0, 2**32 - 1)),
    force_tier=st.one_of(st.just(""), st.sampled_from(["weak", "strong", "medium", "WEAK"]), text),
    include_logprobs=st.booleans(),
)
thresholds = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))
malformed = st.one_of(
    st.binary(min_size=1, max_size=64),
    # the wrong message type: field numbers the request has, with other wire types
    st.builds(
        pb.GenerateResponse,
        text=text,
        tier=text,
        score=st.floats(allow_nan=True),
        usage=st.builds(pb.Usage, prompt_tokens=st.integers(0, 2**32 - 1)),
    )
    .map(lambda m: m.SerializeToString())
    .filter(bool),
    st.binary(max_size=8).map(lambda b: b"\x0a\xff\xff\xff\x0f" + b),  # length past the end
    st.binary(max_size=8).map(lambda b: b"\x12\x05\x0a\x03\xff\xfe\xfd" + b),
)  # bad UTF-8
# The two hostile runs (searches and settings), shared by their tests and by the `hostile_statuses` fixture.
generated_settings = settings(
    max_examples=220,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
given_generated = given(req=requests, threshold=thresholds, stream=st.booleans())
malformed_settings = settings(
    max_examples=120,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
given_malformed = given(data=malformed)


def _send_generated(channel, req, threshold, stream):
    if threshold is not None:
        req.threshold = threshold
    return _call(channel, req.SerializeToString(), "GenerateStream" if stream else "Generate")


@generated_settings
@given_generated
def test_generated_requests_never_get_internal(channel, req, threshold, stream):
    _check(*_send_generated(channel, req, threshold, stream))


@malformed_settings
@given_malformed
def test_malformed_bytes_get_invalid_argument(channel, data):
    _check(*_call(channel, data))


@pytest.fixture
def hostile_statuses(channel) -> Counter:
    """Status counts of a hostile run of its own (the two searches above, same strategies and
    settings), so that what follows it does not depend on other tests having run first."""
    seen: Counter = Counter()

    @generated_settings
    @given_generated
    def generated(req, threshold, stream):
        seen[_send_generated(channel, req, threshold, stream)[0].name] += 1

    @malformed_settings
    @given_malformed
    def malformed_bytes(data):
        seen[_call(channel, data)[0].name] += 1

    generated()
    malformed_bytes()
    return seen


def test_oversize_message_is_refused_by_grpc_not_internal(channel):
    status, details = _call(channel, make_request("x" * (CFG.limits.max_request_bytes + 10)).SerializeToString())
    assert status == C.RESOURCE_EXHAUSTED, details


def test_prompt_over_the_tier_token_limit_names_the_limit(client):
    # The shipped weak model's context is short: a prompt under max_prompt_chars can still be too long.
    with pytest.raises(grpc.RpcError) as e:
        client.generate(make_request("What is 1 + 1? " * 40))
    assert e.value.code() == C.INVALID_ARGUMENT and "tokens for tier 'weak'; its limit is" in e.value.details()


def test_service_is_healthy_after_the_hostile_run(hostile_statuses, client, server):
    seen = dict(hostile_statuses)
    bad = sum(v for k, v in seen.items() if k != "OK")
    print(f"hostile requests: {sum(seen.values())} sent, statuses {seen}")
    assert bad >= 200 and set(seen) <= {"OK", "INVALID_ARGUMENT"}
    r = client.generate(make_request("What is 2 + 3?"))
    assert r.text == "5"
    snap = _status(server)
    assert snap["status"] == "RUNNING"
    assert all(d["status"] == "HEALTHY" and d["replicas"] == {"RUNNING": 1} for d in snap["deployments"].values())


# ---- auth ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("authorization", "Bearer wrong")],
        [("authorization", TOKEN)],
        [("authorization", f"Basic {TOKEN}")],
        [("authorization", "Bearer ")],
    ],
    ids=["none", "wrong", "no-scheme", "basic", "empty"],
)
def test_missing_or_wrong_token_is_unauthenticated(channel, metadata):
    for method in ("Generate", "GenerateStream"):
        status, details = _call(channel, make_request("What is 2 + 3?").SerializeToString(), method, metadata)
        assert status == C.UNAUTHENTICATED and "Bearer" in details


def test_right_token_is_served_and_never_logged(client, server):
    assert client.generate(make_request("What is 2 + 3?")).text == "5"
    assert TOKEN not in server.log.read_text()


# ---- overload ------------------------------------------------------------------------------------
def test_overload_is_refused_quickly_with_a_retry_hint(server, client):
    results, _ = asyncio.run(
        run_load(server.address, FLOOD, concurrency=48, duration=10, metadata=tuple(AUTH), retry_after=True, warm=False)
    )
    codes = {r["code"] for r in results}
    ok = sorted(r["ms"] for r in results if r["code"] == "OK")
    rejected = [(r["ms"], r["trailing"]) for r in results if r["code"] == "RESOURCE_EXHAUSTED"]
    med_rej = statistics.median(ms for ms, _ in rejected)
    p99_ok = ok[int(0.99 * (len(ok) - 1))]
    print(
        f"overload: {len(results)} requests from 48 workers in 10 s ({len(results) / 10:.0f}/s offered): {len(ok)} admitted (p50 "
        f"{statistics.median(ok):.0f} ms, p99 {p99_ok:.0f} ms), {len(rejected)} RESOURCE_EXHAUSTED "
        f"(median {med_rej:.1f} ms)"
    )
    assert codes <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    # 48 callers against an admission limit of 6: at least the first burst beyond the limit is refused
    assert ok and len(rejected) >= 48 - (CFG.limits.max_inflight + 1)
    assert all(t.get("retry-after-ms") == str(CFG.limits.retry_after_ms) for _, t in rejected)
    # Refusing is cheap, waiting is not: measured side by side in one run, not against a fixed time.
    assert med_rej < statistics.median(ok)
    assert client.generate(make_request("What is 2 + 3?")).text == "5"  # back to normal at once


# ---- metrics, logs, status ----------------------------------------------------------------------
def _scrape(url: str) -> dict[str, float]:
    """Sum of each cascade series' samples, keyed by name + the labels that matter here."""
    out: dict[str, float] = {}
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        if not line.startswith("ray_cascade_"):
            continue
        m = re.match(r"(\w+)\{(.*)\} (\S+)$", line)
        if not m:
            continue
        name, labels, value = m.groups()
        keep = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        key = name + "".join(f"|{k}={keep[k]}" for k in ("code", "tier", "reason", "kind") if k in keep)
        out[key] = out.get(key, 0.0) + float(value)
    return out


def test_prometheus_metrics_move(server, client, channel):
    assert server.metrics_url
    key = "ray_cascade_requests_total|code=OK|tier=weak"
    # This test makes every kind of request whose metrics it checks, refusals included, so it does
    # not depend on other tests having run first: one weak answer, then a refusal of each reason.
    assert client.generate(make_request("What is 2 + 3?")).tier == "weak"
    assert _call(channel, make_request("What is 2 + 3?").SerializeToString(), metadata=[])[0] == C.UNAUTHENTICATED
    assert _call(channel, pb.GenerateRequest(prompt="").SerializeToString())[0] == C.INVALID_ARGUMENT
    flood, _ = asyncio.run(
        run_load(server.address, FLOOD, concurrency=48, duration=3, metadata=tuple(AUTH), retry_after=True, warm=False)
    )
    assert "RESOURCE_EXHAUSTED" in {r["code"] for r in flood}  # 48 callers against an admission limit of 6
    refused = [
        f"ray_cascade_rejections_total|reason={r}" for r in ("unauthenticated", "invalid_argument", "overloaded")
    ]
    before = wait_for(
        lambda: (s := _scrape(server.metrics_url)) and key in s and all(r in s for r in refused) and s,
        timeout=90,
        interval=2,
        what="the cascade's metrics on the Prometheus endpoint",
    )
    for p in ["What is 2 + 3?", "What is 48213 + 99377?", "What is 31 + 4?"]:
        client.generate(make_request(p))
    after = wait_for(
        lambda: (s := _scrape(server.metrics_url)) and s.get(key, 0) > before[key] and s,
        timeout=90,
        interval=2,
        what="the request counter to move",
    )
    for name in [
        "ray_cascade_uncertainty_count",
        "ray_cascade_tier_latency_ms_count|tier=weak",
        "ray_cascade_tier_tokens_total|tier=weak|kind=completion",
        "ray_cascade_strong_calls_avoided_total",
        "ray_cascade_rejections_total|reason=unauthenticated",
        "ray_cascade_rejections_total|reason=overloaded",
        "ray_cascade_rejections_total|reason=invalid_argument",
        "ray_cascade_deferral_share",
        "ray_cascade_requests_total|code=INVALID_ARGUMENT|tier=",
    ]:
        assert after.get(name, 0) > 0, (name, sorted(after))


def test_every_log_line_of_a_request_carries_its_id(client, server):
    rid = "trace-me-5511"
    r = client.generate(make_request("What is 48213 + 99377?"), metadata=[("request_id", rid)])  # deferred
    assert (r.request_id, r.tier) == (rid, "strong")
    request_line = re.compile(r" -- (answered by|refused|cancelled|tier |CALL )")
    with_id = re.compile(r"cascade_(Router|tier-\w+) \w+ (\S+) -- ")

    def mine():
        return {
            m.group(1)
            for ln in server.log.read_text().splitlines()
            if rid in ln and (m := with_id.search(ln)) and m.group(2) == rid
        }

    # The router's and both tiers' lines for this request (Serve's access lines included) carry its id.
    wait_for(lambda: mine() >= {"Router", "tier-weak", "tier-strong"}, timeout=30, what="the request's log lines")
    lines = [ln for ln in server.log.read_text().splitlines() if "cascade_" in ln and request_line.search(ln)]
    assert lines and all(with_id.search(ln) for ln in lines), [ln for ln in lines if not with_id.search(ln)][:3]


def _status(server) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "serving.ops.cli", "status", "--json", "--ray-address", server.ray_address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cascade_status_shows_replicas_health_and_recent_deferral_share(server, client):
    for p in ["What is 2 + 3?", "What is 48213 + 99377?"]:
        client.generate(make_request(p))
    snap = _status(server)
    assert set(snap["deployments"]) == {"Router", "tier-weak", "tier-strong"}
    r = snap["router"]
    assert r["recent_requests"] >= 2 and 0 < r["deferral_share"] < 1
    assert r["breakers"] == {"weak": "closed", "strong": "closed"}
