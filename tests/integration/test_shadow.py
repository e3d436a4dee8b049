"""Shadow sampling end to end: `cascade serve` (real Ray Serve, the shipped pair) with shadow.rate 1.0,
called over real gRPC: accepted answers cause shadow calls to the strong tier (status and Prometheus
show them), deferred ones do not; the JSONL appears and `cascade calibrate --shadow` takes it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request

import pytest

from serving.config import TOY_CONFIG, load_config
from serving.evaluation.shadow_data import read_samples
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server, wait_for
from serving.tasks.arithmetic import examples

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shadow_path(tmp_path_factory):
    return tmp_path_factory.mktemp("shadow") / "samples" / "shadow.jsonl"


@pytest.fixture(scope="module")
def server(tmp_path_factory, shadow_path):
    cfg = load_config(TOY_CONFIG)
    cfg.shadow = cfg.shadow.model_copy(update={"rate": 1.0, "path": str(shadow_path), "max_concurrent": 8})
    with cascade_server(cfg, tmp_path_factory.mktemp("serve")) as s:
        yield s


def _status(server) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "serving.ops.cli", "status", "--ray-address", server.ray_address, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _shadow_series(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        m = re.match(r"(ray_cascade_shadow_\w+)\{(.*)\} (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            key = m.group(1) + "".join(f"|{k}={labels[k]}" for k in ("tier", "state", "bound") if k in labels)
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def test_accepted_answers_are_shadowed_deferred_ones_not(server, shadow_path, tmp_path):
    prompts = [e.prompt for e in examples(3, 24)]
    accepted, deferred = [], []
    with CascadeClient(server.address, timeout=120) as client:
        for i, p in enumerate(prompts):
            if i % 3 == 2:  # every third over GenerateStream: the shadow hook follows its last message
                final = [m for m in client.stream(make_request(p)) if m.finished][0]
            else:
                final = client.generate(make_request(p))
            (deferred if final.deferred else accepted).append(p)
        forced = client.generate(make_request(prompts[0], force_tier="weak"))  # forced: never shadowed
        assert forced.tier == "weak"
    for p in [e.prompt for e in examples(5, 6)]:  # the OpenAI front goes through the same hook
        body = json.dumps({"model": "cascade", "messages": [{"role": "user", "content": p}]}).encode()
        req = urllib.request.Request(server.http_url + "/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            (deferred if json.load(r)["cascade"]["deferred"] else accepted).append(p)
    assert accepted and deferred, "the test split should have both kinds"

    shadow = wait_for(
        lambda: (
            (s := _status(server)["router"]["shadow"]["weak"])["completed"]
            + s["failed"]
            + s["dropped_busy"]
            + s["dropped_full"]
            >= len(accepted)
            and s
        ),
        timeout=120,
        interval=1,
        what="the shadow calls to finish",
    )
    assert shadow["next_tier"] == "strong" and shadow["rule"] == "chow_quantile" and shadow["metric"] == "exact_match"
    assert shadow["sampled"] == len(accepted)  # rate 1.0: every accepted answer, no deferred or forced one
    assert shadow["completed"] == len(accepted) and shadow["failed"] == shadow["dropped_full"] == 0
    lo, hi = shadow["interval"]
    assert lo <= shadow["agreement"] <= hi

    lines = read_samples(shadow_path)
    chat = [x["messages"][0]["content"] for x in lines if x["messages"]]  # HTTP chat requests: messages, no prompt
    assert sorted([x["prompt"] for x in lines if not x["messages"]] + chat) == sorted(accepted)
    assert not {x["prompt"] for x in lines} & set(deferred) and not set(chat) & set(deferred)
    assert all(x["logprobs"] and x["answer"] and x["reference"] and x["score"] >= x["threshold"] for x in lines)
    assert sum(x["agreement"] for x in lines) == pytest.approx(shadow["agreed"])

    series = wait_for(
        lambda: (
            (s := _shadow_series(server.metrics_url)).get(
                "ray_cascade_shadow_samples_total|tier=weak|state=completed", 0
            )
            >= len(accepted)
            and s
        ),
        timeout=90,
        interval=2,
        what="the shadow metrics on the Prometheus endpoint",
    )
    assert series["ray_cascade_shadow_samples_total|tier=weak|state=sampled"] == len(accepted)
    assert series["ray_cascade_shadow_agreed_total|tier=weak"] == pytest.approx(shadow["agreed"])
    assert series["ray_cascade_shadow_agreement|tier=weak|bound=estimate"] == pytest.approx(shadow["agreement"])

    text = subprocess.run(
        [sys.executable, "-m", "serving.ops.cli", "status", "--ray-address", server.ray_address],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert f"shadow weak->strong (chow_quantile, exact_match): agreement {shadow['agreement']:.3f}" in text

    out = tmp_path / "art.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.ops.cli",
            "calibrate",
            "--config",
            str(TOY_CONFIG),
            "--data",
            str(shadow_path),
            "--shadow",
            "--target-deferral",
            "0.2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    art = json.loads(out.read_text())
    assert art["data"]["kind"] == "shadow" and art["data"]["n"] == len(accepted)
    assert art["rule"] == "chow_quantile" and art["threshold"] >= min(x["score"] for x in lines)
