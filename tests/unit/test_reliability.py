"""Pure pieces of the failure handling: circuit breaker, recent-share window, token digests,
lenient request parsing. (Cancellation in the engines: tests/unit/test_models.py.)"""

import hashlib

import pytest

from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving.config import TOY_CONFIG, Auth, load_config, parse_config, portable
from serving.core.breaker import CircuitBreaker, RecentShare
from serving.fronts.grpc_api import MalformedRequest, parse_request


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_breaker_opens_after_consecutive_failures_and_probes_after_cooldown():
    clock = Clock()
    b = CircuitBreaker(failures=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    b.success()  # a success resets the count
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.state == "open" and not b.allow() and b.retry_in_s() == pytest.approx(10)
    clock.t = 9.9
    assert not b.allow()
    clock.t = 10.0
    assert b.allow() and b.state == "half_open"
    assert not b.allow()  # only one probe at a time
    b.failure()  # the probe failed: open for another cooldown
    assert b.state == "open" and not b.allow()
    clock.t = 20.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.retry_in_s() == 0


def test_a_half_open_probe_that_says_nothing_frees_the_probe_slot():
    """A probe cancelled by its caller, refused as back-pressure, or ended early must not leave the
    breaker shut for good: the next caller probes."""
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown_s=5, clock=clock)
    b.failure()
    clock.t = 5
    assert b.allow() and not b.allow()  # the probe is out
    b.release()
    assert b.state == "half_open" and b.allow()  # another probe may go
    b.success()
    assert b.state == "closed"


def test_recent_share_is_a_sliding_window():
    w = RecentShare(window=4)
    assert w.share is None and w.n == 0
    for v in [True, True, False, False]:
        w.add(v)
    assert w.share == 0.5
    for v in [False, False]:
        w.add(v)
    assert w.share == 0.0 and w.n == 4


def test_auth_digests_from_config_and_environment(monkeypatch):
    monkeypatch.setenv("MY_TOKENS", " a1 , b2,,")
    auth = Auth(tokens=["c3"], token_sha256=[hashlib.sha256(b"d4").hexdigest().upper()], tokens_env="MY_TOKENS")
    assert auth.digests() == sorted(hashlib.sha256(t.encode()).hexdigest() for t in ["a1", "b2", "c3", "d4"])
    assert "c3" not in repr(auth)
    monkeypatch.delenv("MY_TOKENS")
    assert Auth().digests() == []
    with pytest.raises(ValueError):
        Auth(token_sha256=["not-a-digest"])


def test_plaintext_tokens_never_leave_the_config():
    cfg = load_config(TOY_CONFIG)
    cfg.server.auth = Auth(tokens=["plain-secret"], tokens_env="CASCADE_AUTH_TOKENS")
    out = portable(cfg)
    assert "plain-secret" not in str(out)
    assert out["server"]["auth"]["token_sha256"] == [hashlib.sha256(b"plain-secret").hexdigest()]


def test_malformed_bytes_parse_to_a_marker_not_an_exception():
    ok = pb.GenerateRequest(prompt="hi", max_new_tokens=3)
    assert parse_request(ok.SerializeToString()) == ok
    for data in [b"\xff\xff\xff", b"\x0a\x05ab", b"\x12\x03\xff\x00\x01", b"\x0a\x02\xff\xfe"]:
        bad = parse_request(data)
        assert isinstance(bad, MalformedRequest) and bad.size == len(data) and bad.error


def test_a_unary_call_gives_up_once_its_callee_has_no_running_replica(monkeypatch):
    """The tier client's unary call (a judge's) waits for its response, but not for a replacement replica: once
    the callee has had none running for READY_GRACE_S it fails as ``unavailable`` (long before its timeout);
    while a replica runs it waits, and a slow callee still times out."""
    import asyncio
    import time

    import serving.serve.tier_client as tc
    from serving.core.errors import TierFailure

    monkeypatch.setattr(tc, "READY_GRACE_S", 0.3)

    class Response:
        cancelled = False

        def __init__(self, after):
            self.after = after

        def __await__(self):
            return asyncio.sleep(self.after, "scored").__await__()

        def cancel(self):
            self.cancelled = True

    class Handle:
        def __init__(self, after):
            self.after = after

        def options(self, **kw):
            return self

        @property
        def judge(self):
            return self

        def remote(self, *args):
            self.response = Response(self.after)
            return self.response

    cfg = parse_config(
        {
            "tiers": [{"name": "weak", "model": {"source": "weak"}}, {"name": "strong", "model": {"source": "s"}}],
            "deferral": {"rule": "chow_sum", "threshold": -1.0},
        }
    )

    def client(after, running):
        c = tc.ServeTierClient(cfg, {"weak": Handle(after), "strong": Handle(after)}, None)
        c.running = lambda name: running()
        return c

    replicas = iter([1, 1] + [0] * 1000)  # one check passes _ready, then the replica is gone
    c = client(60.0, lambda: next(replicas))
    t0 = time.perf_counter()
    with pytest.raises(TierFailure) as e:
        asyncio.run(c.call("weak", "judge", timeout=30.0))
    assert e.value.reason == "unavailable" and time.perf_counter() - t0 < 5
    assert c.unary["weak"].response.cancelled
    assert asyncio.run(client(0.5, lambda: 1).call("weak", "judge", timeout=5.0)) == "scored"
    with pytest.raises(TierFailure) as e:
        asyncio.run(client(60.0, lambda: 1).call("weak", "judge", timeout=0.5))
    assert e.value.reason == "timeout"


def test_unary_and_streamed_tier_calls_fail_the_same_way():
    """One guarded path: whatever a tier call raises reaches the caller as the same TierFailure / BadRequest,
    and tells the breaker the same, whether the call is unary or a stream."""
    import asyncio

    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    import serving.serve.tier_client as tc
    from serving.core.errors import BadRequest, TierFailure
    from serving.core.types import GenerationRequest

    class Local:  # a co-located tier (called in process, under the same guard)
        def __init__(self, error):
            self.error = error

        async def stream(self, *args):
            if self.error is None:
                await asyncio.sleep(60)
            raise self.error
            yield

        async def prompt_logprobs(self, *args):
            return await self.stream().__anext__()

    cfg = parse_config(
        {
            "tiers": [
                {"name": "weak", "model": {"source": "weak"}, "timeout_s": 0.2},
                {"name": "strong", "model": {"source": "s"}},
            ],
            "deferral": {"rule": "chow_sum", "threshold": -1.0},
            "reliability": {"breaker_failures": 1},
        }
    )

    async def streamed(c):
        async for _ in c.stream("weak", GenerationRequest(prompt="q")):
            pass

    cases = [
        (BadRequest("too long", "prompt"), "closed"),
        (BackPressureError(num_queued_requests=3, max_queued_requests=3), "closed"),
        (DeploymentUnavailableError("weak"), "open"),
        (ValueError("bug"), "open"),
        (None, "open"),  # the tier never answers: its timeout
    ]
    for error, breaker in cases:
        seen = []
        for how in (streamed, lambda c: c.call("weak", "prompt_logprobs")):
            c = tc.ServeTierClient(cfg, {}, None, {"weak": Local(error)})
            with pytest.raises((TierFailure, BadRequest)) as e:
                asyncio.run(how(c))
            seen.append((type(e.value), str(e.value), getattr(e.value, "reason", None), c.breakers["weak"].state))
        assert seen[0] == seen[1] and seen[0][3] == breaker, seen
