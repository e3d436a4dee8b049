"""A tier with no running replica is answered at once, not after its timeout: a real `cascade serve` whose
strong tier autoscales from zero (no replica at the start). A request forced to it gets UNAVAILABLE naming it
with a retry hint (gRPC `retry-after-ms`; HTTP 503 + `Retry-After`) within about a second; a request the weak
tier defers is answered by weak, flagged degraded, as fast; and the refusals wake the tier, which Serve then
scales up from zero, after which it answers. Real Ray Serve, real gRPC and HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import grpc
import pytest

from serving.config import TOY_CONFIG, load_config
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server, wait_for

pytestmark = pytest.mark.integration
CFG = load_config(TOY_CONFIG)
for opts in (CFG.router, CFG.tiers[0].serve):
    opts.autoscaling_config, opts.num_replicas = None, 1
strong = CFG.tier("strong")
assert strong.timeout_s >= 10  # what waiting for it used to cost
strong.serve.num_replicas = None
strong.serve.autoscaling_config = {
    "min_replicas": 0,
    "initial_replicas": 0,
    "max_replicas": 1,
    "target_ongoing_requests": 1,
    "metrics_interval_s": 0.5,
    "look_back_period_s": 1,
    "upscale_delay_s": 0,
    "downscale_delay_s": 600,
    "downscale_to_zero_delay_s": 600,
}
FAST_S = 1.0
DEFERRED = "What is 48213 + 99377?"  # the weak tier defers it (test_cascade_grpc)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with cascade_server(CFG, tmp_path_factory.mktemp("readiness")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with CascadeClient(server.address, timeout=60) as c:
        yield c


def _grpc_forced(server):
    with grpc.insecure_channel(server.address) as ch:
        rpc = ch.unary_unary(
            "/cascade.v1.Cascade/Generate",
            request_serializer=lambda m: m.SerializeToString(),
        )
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            rpc(make_request("What is 2 + 3?", force_tier="strong"), timeout=60)
        return time.monotonic() - t0, e.value


def _http_forced(server):
    body = json.dumps({"model": "cascade:strong", "messages": [{"role": "user", "content": "What is 2 + 3?"}]})
    req = urllib.request.Request(
        server.http_url + "/chat/completions", body.encode(), {"Content-Type": "application/json"}
    )
    t0 = time.monotonic()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    return time.monotonic() - t0, e.value


def test_ready_means_warmed_and_a_tier_at_zero_is_refused_at_once(server, client):
    # `cascade serve` said ready: the weak tier answers at once (its replica ran its warm-up first)
    assert client.generate(make_request("What is 2 + 3?")).text == "5"
    assert "warmed up" in server.log.read_text()

    seconds, e = _grpc_forced(server)
    trailing = dict(e.trailing_metadata() or ())
    print(f"forced to a tier with no replica: gRPC {e.code().name} in {seconds * 1e3:.0f} ms: {e.details()}")
    assert e.code() == grpc.StatusCode.UNAVAILABLE and seconds < FAST_S, (e.code(), seconds)
    assert "'strong'" in e.details() and "no running replica" in e.details()
    assert trailing.get("retry-after-ms") == str(CFG.limits.retry_after_ms)

    seconds, e = _http_forced(server)
    payload = json.loads(e.read())
    print(f"forced to a tier with no replica: HTTP {e.code} in {seconds * 1e3:.0f} ms: {payload}")
    assert e.code == 503 and seconds < FAST_S and e.headers["Retry-After"] == "1"
    assert "'strong'" in payload["error"]["message"] and payload["error"]["type"] == "service_unavailable"

    t0 = time.monotonic()
    r = client.generate(make_request(DEFERRED))
    seconds = time.monotonic() - t0
    print(f"deferred to a tier with no replica: {r.tier} in {seconds * 1e3:.0f} ms, degraded: {r.degraded_reason}")
    assert (r.tier, r.deferred, r.degraded) == ("weak", True, True) and seconds < FAST_S
    assert "'strong' has no running replica" in r.degraded_reason


def test_the_refusals_wake_a_tier_scaled_to_zero(server, client):
    def strong_answers():
        try:
            return client.generate(make_request("What is 2 + 3?", force_tier="strong"))
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE and "no running replica" in e.details(), e.details()
            time.sleep(1)
            return None

    r = wait_for(strong_answers, timeout=180, interval=0.5, what="the strong tier to scale up from zero")
    assert (r.tier, r.text) == ("strong", "5")
    r = client.generate(make_request(DEFERRED))
    assert (r.tier, r.degraded) == ("strong", False)
