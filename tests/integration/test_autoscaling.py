"""Per-tier autoscaling at small scale: under load on the weak tier only, it goes from 1 to 2
replicas and back, while the strong tier stays at 1 (each tier scales by its own engine's load,
through Serve's custom policy: serving/serve/autoscaling.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from serving.config import TOY_CONFIG, load_config, parse_config
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server, wait_for
from serving.serve.autoscaling import ENGINE_AUTOSCALING

pytestmark = pytest.mark.integration
# the shipped engine-load policy (serving/serve/autoscaling.py), on windows short enough for a test
FAST = {
    **ENGINE_AUTOSCALING,
    "min_replicas": 1,
    "initial_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 1,
    "upscale_delay_s": 1,
    "downscale_delay_s": 4,
    "metrics_interval_s": 0.5,
    "look_back_period_s": 2,
}


class Watch:
    """`cascade status --watch` in the background: the latest replica counts, and every sample."""

    def __init__(self, ray_address: str):
        self.samples: list[dict] = []
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "cascade"),
                "status",
                "--watch",
                "0.5",
                "--json",
                "--ray-address",
                ray_address,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            snap = json.loads(line)
            self.samples.append({name: d["replicas"].get("RUNNING", 0) for name, d in snap["deployments"].items()})

    def running(self, deployment: str) -> int:
        return self.samples[-1].get(deployment, 0) if self.samples else 0

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def test_weak_tier_scales_out_and_back_independently(tmp_path):
    raw = load_config(TOY_CONFIG).model_dump(mode="json", exclude_none=True)
    for tier in raw["tiers"]:
        tier["serve"]["autoscaling_config"] = dict(FAST)
        tier["serve"]["max_ongoing_requests"] = 8
    cfg = parse_config(raw)
    with cascade_server(cfg, tmp_path) as server:
        watch = Watch(server.ray_address)
        stop, errors, done = threading.Event(), [], [0]

        def load():
            with CascadeClient(server.address, timeout=60) as c:
                while not stop.is_set():
                    try:
                        c.generate(make_request("What is 48213 + 99377?", force_tier="weak"))
                        done[0] += 1
                    except grpc.RpcError as e:
                        errors.append(e.code())

        try:
            wait_for(lambda: watch.running("tier-weak") == 1, 60, what="the first status sample")
            threads = [threading.Thread(target=load) for _ in range(6)]
            for t in threads:
                t.start()
            t0 = time.monotonic()
            try:
                wait_for(lambda: watch.running("tier-weak") >= 2, 120, what="the weak tier to scale out")
                up_s = time.monotonic() - t0
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=60)
            t1 = time.monotonic()
            wait_for(lambda: watch.running("tier-weak") == 1, 120, what="the weak tier to scale back in")
            down_s = time.monotonic() - t1
        finally:
            watch.close()
        print(
            f"weak tier: 1 -> 2 replicas in {up_s:.1f}s under load, back to 1 in {down_s:.1f}s; "
            f"{done[0]} requests, errors {errors}"
        )
        assert not errors and done[0] > 0
        assert all(s.get("tier-strong") == 1 for s in watch.samples if s), "the strong tier must not scale"
