"""A Ray cluster of four nodes on one machine, started with `ray start` (a head that takes the ingress, two
nodes declaring the weak pool, one declaring the strong pool); the cascade deployed from the Serve config that
`cascade build` generates, with `serve deploy`; every replica of each tier must run on a node of its own pool,
and a gRPC request is answered end to end. Then one of the weak pool's nodes is killed (its whole session:
raylet, workers, the replica on it) under load: the requests in flight are answered (retried on the other
replica before their first byte), and Serve reschedules the lost replica on the surviving node of the pool."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from benchmarks.cluster import LocalCluster
from serving.config import TOY_CONFIG, load_config
from serving.ops.client import CascadeClient, make_request
from serving.ops.loadgen import run_load
from serving.ops.local import free_ports, wait_for
from serving.tasks.arithmetic import examples

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
POOLS = {"weak-a": {"weak_pool": 4}, "weak-b": {"weak_pool": 4}, "strong": {"strong_pool": 4}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # node deaths are noticed within ~3 s (GCS health checks every 1 s, 3 misses) instead of Ray's ~15 s default
    fast = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    mp = pytest.MonkeyPatch()
    with LocalCluster(tmp_path_factory.mktemp("cluster"), POOLS, head_resources={"ingress": 4}, env=fast) as c:
        for k, v in c.env.items():
            if k.startswith("RAY_"):
                mp.setenv(k, v)
        mp.delenv("RAY_ADDRESS", raising=False)
        import ray

        ray.init(address=c.address, logging_level="WARNING")
        try:
            yield c
        finally:
            ray.shutdown()
            mp.undo()


@pytest.fixture(scope="module")
def deployed(cluster):
    from ray import serve

    cfg = load_config(TOY_CONFIG)
    cfg.server.grpc_port, cfg.server.http_port = free_ports(2)
    cfg.tiers[0].serve.autoscaling_config = None
    cfg.tiers[0].serve.num_replicas = 2  # two weak replicas: both must land on weak nodes
    cfg.router.ray_actor_options["resources"] = {"ingress": 1}  # the Router on the head, beside Serve's proxy
    cfg_path = cluster.workdir / "cascade.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    serve_yaml = cluster.workdir / "serve.yaml"
    subprocess.run([str(BIN / "cascade"), "build", "--config", str(cfg_path), "-o", str(serve_yaml)], check=True)
    out = subprocess.run(
        [str(BIN / "serve"), "deploy", str(serve_yaml), "--address", cluster.dashboard],
        capture_output=True,
        text=True,
        timeout=120,
        env=cluster.env,
    )
    assert out.returncode == 0, out.stderr

    def running():
        try:
            app = serve.status().applications.get(cfg.server.app_name)
        except Exception:
            return False
        return app is not None and app.status == "RUNNING"

    wait_for(running, 300, interval=1, what="the cascade to be RUNNING")
    yield cfg
    serve.shutdown()


def _replicas(cluster, cfg, tier: str) -> list:
    from ray.util.state import list_actors

    actors = list_actors(address=cluster.dashboard, filters=[("state", "=", "ALIVE")], limit=1000)
    return [a for a in actors if a.class_name == f"ServeReplica:{cfg.server.app_name}:{tier}"]


def _node_names() -> dict[str, str]:
    """Ray node id -> our node name (by the pool it declares; the head by `ingress`)."""
    import ray

    out = {}
    for n in ray.nodes():
        if n["Alive"]:
            res = n["Resources"]
            out[n["NodeID"]] = "head" if "ingress" in res else ("strong" if "strong_pool" in res else "weak")
    return out


def test_replicas_run_on_their_pools_and_answer_over_grpc(cluster, deployed):
    import ray

    cfg = deployed
    nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    for tier, pool, count in (("tier-weak", "weak_pool", 2), ("tier-strong", "strong_pool", 1)):
        replicas = _replicas(cluster, cfg, tier)
        assert len(replicas) == count
        for a in replicas:
            assert pool in nodes[a.node_id], f"{tier} replica on a node without {pool}"
    (router,) = _replicas(cluster, cfg, "Router")
    assert "ingress" in nodes[router.node_id]

    with CascadeClient(f"127.0.0.1:{cfg.server.grpc_port}", timeout=120) as c:
        r = c.generate(make_request("What is 48213 + 99377?"))
        assert r.text == "147590" and r.tier == "strong" and r.deferred
        r = c.generate(make_request("What is 2 + 3?"))
        assert (r.text, r.tier) == ("5", "weak")


def test_a_weak_node_killed_under_load(cluster, deployed):
    """SIGKILL the session of a weak node that holds a replica while 4 callers keep the cascade busy: at least
    99 % of the calls are answered, none hangs, and the weak tier is back to 2 replicas, both on the other node."""
    from ray import serve

    cfg = deployed
    before = _replicas(cluster, cfg, "tier-weak")
    victim_node = before[0].node_id
    victim = cluster.node_of(before[0].pid)
    assert victim.startswith("weak"), victim
    prompts = [e.prompt for e in examples(3, 120)]
    box: dict = {}

    def kill_later():
        time.sleep(4)
        box["t"] = time.monotonic()
        cluster.kill(victim)

    th = threading.Thread(target=kill_later, daemon=True)
    th.start()
    results, _ = asyncio.run(
        run_load(f"127.0.0.1:{cfg.server.grpc_port}", prompts, concurrency=4, duration=16, timeout=20)
    )
    th.join()
    codes = Counter(r["code"] for r in results)
    assert codes["OK"] / len(results) >= 0.99, codes
    assert codes["DEADLINE_EXCEEDED"] == 0, codes

    def rescheduled():
        try:
            d = serve.status().applications[cfg.server.app_name].deployments["tier-weak"]
        except Exception:
            return False
        reps = _replicas(cluster, cfg, "tier-weak")
        return d.status == "HEALTHY" and len(reps) == 2 and all(a.node_id != victim_node for a in reps) and reps

    reps = wait_for(rescheduled, 120, interval=1, what="the weak tier rescheduled on the surviving node")
    assert len({a.node_id for a in reps}) == 1 and _node_names()[reps[0].node_id] == "weak"
    with CascadeClient(f"127.0.0.1:{cfg.server.grpc_port}", timeout=60) as c:
        assert c.generate(make_request("What is 2 + 3?", force_tier="weak")).text == "5"
