"""Fault injection and inspection for a running cascade on this machine (tests and ``benchmarks.faults``;
not part of the package: it needs ``psutil``, from the ``bench`` and ``dev`` extras).

``python -m benchmarks.chaos --ray-address ADDR`` connects to the cascade's Ray once and then answers one
JSON command a line on stdin with one JSON line on stdout, so a caller pays Ray's start-up once and can
time what it asks (an engine's running count polled every 0.1 s after a client hangs up). Commands:

- ``{"op": "replicas", "deployment": "tier-weak"}``: the deployment's live replica actors (name, pid, node)
- ``{"op": "kill", "deployment": ..., "pid": optional}``: SIGKILL one replica's process (a real crash; Serve
  sees the actor die and starts another)
- ``{"op": "kill_engine_core", "deployment": ...}``: SIGKILL the vLLM engine-core process under one replica
- ``{"op": "tier_stats", "deployment": ...}``: one replica's engine stats (``TierDeployment.stats``)
- ``{"op": "router_stats"}``: one router replica's ``cascade status`` view
- ``{"op": "status"}``: Serve's view of the app (deployment status, replica states)
- ``{"op": "procs"}``: RSS, threads and open fds of every replica process of the app
- ``{"op": "session_dir"}``: the Ray session's directory (its ``logs/``)

``Chaos`` is the caller's side (a subprocess; its Ray connection never enters the caller's process).
Only the app's own replica processes are touched, and only on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from serving import compat

PREFIX = "SERVE_REPLICA::"
ROOT = Path(__file__).resolve().parents[1]


class Chaos:
    """The agent as a subprocess: ``ask(op, **args)`` -> its JSON answer (raises on an error answer)."""

    def __init__(self, ray_address: str, app: str = "cascade", timeout: float = 120.0):
        env = dict(os.environ)
        env.setdefault("RAY_AUTH_MODE", "token")
        env.pop("RAY_ADDRESS", None)
        # the agent calls handles from plain (not async) code: their router needs its own loop, whatever Serve
        # setting a parent process took from serving/serve/tuning.py (importing serving.ops.cli sets them)
        env["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.chaos", "--ray-address", ray_address, "--app", app],
            cwd=ROOT,  # the checkout: benchmarks is not installed
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.ask("ping", timeout=timeout)

    def ask(self, op: str, timeout: float = 60.0, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"chaos agent exited (rc={self.proc.poll()}) on {op}")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"chaos {op}: {out['error']}")
        return out["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Chaos:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- the agent's side (inside the subprocess, connected to Ray) ------------------------------------------
class Agent:
    def __init__(self, app: str):
        self.app = app
        self.loop = asyncio.new_event_loop()  # one loop, one handle per deployment: calls after the first are quick
        self.handles: dict[str, Any] = {}

    def _call(self, deployment: Optional[str], method: str, timeout: float = 10.0):
        from ray import serve

        key = deployment or ""
        if key not in self.handles:
            self.handles[key] = (
                serve.get_deployment_handle(deployment, app_name=self.app)
                if deployment
                else serve.get_app_handle(self.app)
            )
        return self.loop.run_until_complete(asyncio.wait_for(getattr(self.handles[key], method).remote(), timeout))

    def replicas(self, deployment: str) -> list[dict]:
        prefix = f"{PREFIX}{self.app}#{deployment}#"
        out = []
        for a in compat.alive_actors():
            if a["Name"].startswith(prefix) and a["State"] == "ALIVE":
                out.append(
                    {
                        "name": a["Name"],
                        "replica_id": a["Name"][len(prefix) :],
                        "pid": a["Pid"],
                        "node_id": a["Address"]["NodeID"],
                    }
                )
        return sorted(out, key=lambda r: r["name"])

    def kill(self, deployment: str, pid: Optional[int] = None) -> dict:
        reps = self.replicas(deployment)
        if not reps:
            raise RuntimeError(f"no live replica of {deployment}")
        victim = next((r for r in reps if r["pid"] == pid), None) if pid else reps[0]
        if victim is None:
            raise RuntimeError(f"no replica of {deployment} with pid {pid}")
        os.kill(victim["pid"], signal.SIGKILL)
        return victim | {"at": time.time()}

    def kill_engine_core(self, deployment: str, wait_s: float = 15.0) -> dict:
        """SIGKILLs the vLLM engine-core process under one of the deployment's replicas. Looks again for up to
        ``wait_s`` (a replica's process tree can be read before vLLM has titled its engine core, on a busy box)."""
        import psutil

        deadline = time.time() + wait_s
        while True:
            for r in self.replicas(deployment):
                try:
                    children = psutil.Process(r["pid"]).children(recursive=True)
                except psutil.Error:
                    continue
                for child in children:
                    try:
                        title = " ".join(child.cmdline()) + " " + child.name()
                    except psutil.Error:
                        continue
                    # vLLM titles it VLLM::EngineCore; where setproctitle did not take (seen on a busy box) it
                    # is still the replica's multiprocessing child (the resource tracker runs another main)
                    if "EngineCore" in title or "spawn_main" in title:
                        child.send_signal(signal.SIGKILL)
                        return r | {"engine_core_pid": child.pid, "at": time.time()}
            if time.time() >= deadline:
                raise RuntimeError(f"no vLLM engine-core process under {deployment}'s replicas")
            time.sleep(0.5)

    def tier_stats(self, deployment: str) -> dict:
        return self._call(deployment, "stats")

    def router_stats(self) -> dict:
        return self._call(None, "stats").as_dict()

    def status(self) -> dict:
        from ray import serve

        app = serve.status().applications.get(self.app)
        if app is None:
            return {"status": "MISSING", "deployments": {}}
        return {
            "status": app.status.value if hasattr(app.status, "value") else str(app.status),
            "deployments": {
                n: {
                    "status": d.status.value if hasattr(d.status, "value") else str(d.status),
                    "replicas": {getattr(k, "value", str(k)): v for k, v in d.replica_states.items()},
                }
                for n, d in app.deployments.items()
            },
        }

    def procs(self) -> list[dict]:
        import psutil

        out = []
        for a in compat.alive_actors():
            if not a["Name"].startswith(f"{PREFIX}{self.app}#") or a["State"] != "ALIVE":
                continue
            try:
                p = psutil.Process(a["Pid"])
                with p.oneshot():
                    out.append(
                        {
                            "name": a["Name"],
                            "pid": a["Pid"],
                            "rss": p.memory_info().rss,
                            "threads": p.num_threads(),
                            "fds": p.num_fds(),
                        }
                    )
            except psutil.Error:
                continue
        return out

    def session_dir(self) -> str:
        return compat.session_dir()

    def ping(self) -> str:
        return "pong"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ray-address", required=True)
    ap.add_argument("--app", default="cascade")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    # answers go out on a copy of stdout; fd 1 itself goes to stderr, so nothing Ray prints (its C++ core's
    # messages about a dead node, say) can land between two answers
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import ray

    ray.init(address=args.ray_address, logging_level="ERROR", log_to_driver=False)
    agent = Agent(args.app)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = json.loads(line)
            op = cmd.pop("op")
            try:
                reply = {"result": getattr(agent, op)(**cmd)}
            except Exception as e:
                reply = {"error": f"{type(e).__name__}: {e}"}
            print(json.dumps(reply, default=str), file=replies, flush=True)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
