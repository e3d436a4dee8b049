"""`cascade plan` end to end: it probes a real one-replica cascade, prints the plan with its
assumptions, writes a config that `cascade serve` deploys with the planned replicas, and a bad
request names what is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.config import TOY_CONFIG, load_config
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server, wait_for
from serving.ops.planner import ASSUMPTIONS

pytestmark = pytest.mark.integration
CASCADE = str(Path(sys.executable).parent / "cascade")


def test_probe_plan_and_deploy_the_plan(tmp_path):
    out, probe_out = tmp_path / "plan.yaml", tmp_path / "probe.json"
    r = subprocess.run(
        [
            CASCADE,
            "plan",
            "--config",
            str(TOY_CONFIG),
            "--qps",
            "8",
            "--probe-concurrency",
            "1,4",
            "--probe-seconds",
            "2",
            "--probe-out",
            str(probe_out),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "weak" in r.stdout and "strong" in r.stdout and ASSUMPTIONS[0] in r.stdout
    # the same measurements again, as JSON: the plan is a function of them
    again = subprocess.run(
        [
            CASCADE,
            "plan",
            "--config",
            str(TOY_CONFIG),
            "--qps",
            "8",
            "--measured",
            str(probe_out),
            "--deferral",
            "0.25",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    p = json.loads(again.stdout)
    assert [t["arrival_rps"] for t in p["tiers"]] == [8.0, 2.0] and p["deferral_source"] == "--deferral"
    cfg = load_config(out)
    planned = {t.name: t.serve.autoscaling_config for t in cfg.tiers}
    assert all(a.policy.policy_function == "serving.serve.autoscaling:EngineLoad" for a in planned.values())
    with cascade_server(cfg, tmp_path / "serve") as server:
        with CascadeClient(server.address, timeout=60) as c:
            assert c.generate(make_request("What is 2 + 2?")).text

        def running():
            snap = json.loads(
                subprocess.run(
                    [CASCADE, "status", "--json", "--ray-address", server.ray_address],
                    capture_output=True,
                    text=True,
                    timeout=120,
                ).stdout
            )
            got = {n: snap["deployments"][f"tier-{n}"]["replicas"].get("RUNNING", 0) for n in planned}
            return got == {n: a.initial_replicas for n, a in planned.items()}

        wait_for(running, 180, interval=2, what="the planned replicas")


def test_a_plan_it_cannot_make_says_why(tmp_path):
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"runs": {"c1": {"tiers": {}}}}))
    r = subprocess.run(
        [CASCADE, "plan", "--config", str(TOY_CONFIG), "--qps", "8", "--measured", str(report)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "no per-tier latencies for tier(s) ['weak', 'strong']" in r.stderr
    r = subprocess.run(
        [CASCADE, "plan", "--config", str(TOY_CONFIG), "--qps", "8", "--measured", str(report), "--deferral", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
