"""Pure pieces of the failure handling: circuit breaker, recent-share window, token digests,
lenient request parsing, and per-row cancellation in the HF backend."""

import hashlib
import threading

import pytest
from transformers.generation.streamers import BaseStreamer

from serving.config import Auth, load_config, portable
from serving.models import GenerationRequest, HFBackend
from serving.config import ModelSource, Generation as GenDefaults
from serving.reliability import CircuitBreaker, RecentShare
from serving.service import MalformedRequest, parse_request
from serving._proto.cascade.v1 import cascade_pb2 as pb


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
    cfg = load_config()
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


def test_cancelled_rows_stop_generating(tiny_model_dir):
    backend = HFBackend(ModelSource(source=str(tiny_model_dir)), GenDefaults(max_new_tokens=60))
    # A random model rarely emits end-of-sequence, so uncancelled rows run to max_new_tokens.
    reqs = [GenerationRequest(prompt="What is 1 + 2?"), GenerationRequest(prompt="What is 3 + 4?")]
    keep, drop = threading.Event(), threading.Event()
    drop.set()
    steps = Steps()
    full, cut = backend.generate(reqs, cancel=[keep, drop], streamer=steps)
    assert cut.completion_tokens <= 1 and cut.finish_reason == "cancelled"
    assert full.completion_tokens == 60 and steps.n == 60
    steps = Steps()
    both = backend.generate(reqs, cancel=[drop, drop], streamer=steps)
    assert steps.n == 1 and all(g.finish_reason == "cancelled" for g in both)  # one forward pass, not 60


class Steps(BaseStreamer):
    """Counts decoding steps (the first put is the prompt)."""

    def __init__(self):
        self.n = -1

    def put(self, value):
        self.n += 1

    def end(self):
        pass
