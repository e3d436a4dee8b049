"""A Ray cluster of three nodes on one machine, started with `ray start` (a head, a node declaring
the weak pool, one declaring the strong pool); the cascade deployed from the Serve config that
`cascade build` generates, with `serve deploy`; every replica of each tier must run on a node of
its own pool, and a gRPC request is answered end to end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from serving.config import load_config
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import free_ports, wait_for

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
# `ray start` turns on token authentication unless told otherwise; this loopback test cluster runs
# without it, like the in-process clients expect (a real cluster keeps it: see cluster/README.md).
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}


@contextlib.contextmanager
def ray_node(args: list[str], log: Path):
    """`ray start --block` in the foreground: SIGTERM stops the node and everything it started."""
    env = dict(os.environ, **ENV)
    env.pop("RAY_ADDRESS", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for k, v in ENV.items():
        mp.setenv(k, v)
    try:
        yield from _cluster(tmp_path_factory)
    finally:
        mp.undo()


def _cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    names = (
        "node-manager-port",
        "object-manager-port",
        "metrics-export-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
    )
    gcs, dash, *ports = free_ports(2 + 3 * len(names))
    head_addr = f"127.0.0.1:{gcs}"
    common = ["--num-cpus=1"]

    def own_ports(k: int):  # several nodes on one host: every per-node port must differ, worker ports too
        mine = ports[k * len(names) : (k + 1) * len(names)]
        lo = 20000 + 1000 * k
        return (
            [f"--{n}={p}" for n, p in zip(names, mine)]
            + [f"--min-worker-port={lo}", f"--max-worker-port={lo + 999}"]
            + [f"--temp-dir={stack.enter_context(tempfile.TemporaryDirectory(prefix='ray'))}"]
        )  # own sockets

    with contextlib.ExitStack() as stack:  # closes in reverse: client, workers, head, then the temp dirs
        stack.enter_context(
            ray_node(
                [
                    "--head",
                    f"--port={gcs}",
                    "--node-ip-address=127.0.0.1",
                    "--include-dashboard=true",
                    f"--dashboard-port={dash}",
                    "--dashboard-host=127.0.0.1",
                    *common,
                    *own_ports(0),
                ],
                tmp / "head.log",
            )
        )
        import ray

        wait_for(
            lambda: (
                subprocess.run([str(BIN / "ray"), "status", f"--address={head_addr}"], capture_output=True).returncode
                == 0
            ),
            120,
            interval=2,
            what="the head node",
        )
        for k, pool in enumerate(("weak_pool", "strong_pool"), start=1):
            stack.enter_context(
                ray_node(
                    [
                        f"--address={head_addr}",
                        "--node-ip-address=127.0.0.1",
                        f'--resources={{"{pool}": 4}}',
                        *common,
                        *own_ports(k),
                    ],
                    tmp / f"{pool}.log",
                )
            )
        ray.init(address=head_addr, logging_level="WARNING")
        stack.callback(ray.shutdown)
        wait_for(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 3, 120, what="three nodes")
        yield {"gcs": head_addr, "dashboard": f"http://127.0.0.1:{dash}", "tmp": tmp}


def test_replicas_run_on_their_pools_and_answer_over_grpc(cluster):
    import ray
    from ray import serve
    from ray.util.state import list_actors

    cfg = load_config()
    cfg.server.grpc_port, cfg.server.http_port = free_ports(2)
    cfg.tiers[0].serve.autoscaling_config = None
    cfg.tiers[0].serve.num_replicas = 2  # two weak replicas: both must land on the weak node
    cfg_path = cluster["tmp"] / "cascade.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    serve_yaml = cluster["tmp"] / "serve.yaml"
    subprocess.run([str(BIN / "cascade"), "build", "--config", str(cfg_path), "-o", str(serve_yaml)], check=True)
    out = subprocess.run(
        [str(BIN / "serve"), "deploy", str(serve_yaml), "--address", cluster["dashboard"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr

    def running():
        try:
            app = serve.status().applications.get(cfg.server.app_name)
        except Exception:
            return False
        return app is not None and app.status == "RUNNING"

    wait_for(running, 300, interval=1, what="the cascade to be RUNNING")
    nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    actors = list_actors(address=cluster["dashboard"], filters=[("state", "=", "ALIVE")], limit=1000)
    for tier, pool, count in (("weak", "weak_pool", 2), ("strong", "strong_pool", 1)):
        replicas = [a for a in actors if a.class_name == f"ServeReplica:{cfg.server.app_name}:tier-{tier}"]
        assert len(replicas) == count
        for a in replicas:
            assert pool in nodes[a.node_id], f"{tier} replica on a node without {pool}"
    assert any(a.class_name == f"ServeReplica:{cfg.server.app_name}:Router" for a in actors)

    with CascadeClient(f"127.0.0.1:{cfg.server.grpc_port}", timeout=120) as c:
        r = c.generate(make_request("What is 48213 + 99377?"))
        assert r.text == "147590" and r.tier == "strong" and r.deferred
        r = c.generate(make_request("What is 2 + 3?"))
        assert (r.text, r.tier) == ("5", "weak")
    serve.shutdown()
