"""A Ray cluster of several nodes on this machine (tests/integration/test_multinode_pools.py and the ``node``
scenario of ``benchmarks.faults``): not part of the package; :meth:`LocalCluster.kill` needs ``psutil`` (the
``bench`` and ``dev`` extras)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from serving.ops.local import free_ports, wait_for

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
        import json

        try:  # a dashboard still starting can answer 0 with text that is not the list (seen in a clean-clone run)
            nodes = json.loads(out.stdout or "[]") if out.returncode == 0 else None
        except ValueError:
            nodes = None
        return -1 if not isinstance(nodes, list) else sum(n.get("state") == "ALIVE" for n in nodes)

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
