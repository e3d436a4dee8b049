"""What the benchmarks share: prompts, JSON and plot output, Serve replica polling. The load itself is
``serving.ops.loadgen`` (the one load generator). Run a benchmark as ``python -m benchmarks.<name>``."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Optional

from serving.evaluation.data import SPLIT_SEEDS, load_jsonl
from serving.ops.probe import one_replica  # noqa: F401  (the benchmarks' one-replica configs)
from serving.tasks.arithmetic import examples

os.environ.setdefault("RAY_AUTH_MODE", "token")  # present Ray's token when polling replicas (set before Ray loads)


class ReplicaPoller:
    """Running replicas per deployment over time, from serve.status() (in a thread)."""

    def __init__(self, ray_address: Optional[str], app: str, interval: float = 1.0):
        self.samples: list[dict] = []
        self.app, self.interval, self.stop = app, interval, threading.Event()
        self.ok, self.connected = False, False
        try:
            import ray

            from serving.ops.local import find_local_ray

            address = ray_address or find_local_ray()
            if address is None:
                raise ConnectionError("no running Ray found on this machine")
            if not ray.is_initialized():
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
                self.connected = True
            self.ok = True
        except Exception as e:  # no Ray to ask: the load still runs
            print(f"replica polling off: {type(e).__name__}: {e}")
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from ray import serve

        while not self.stop.is_set():
            try:
                app = serve.status().applications.get(self.app)
                counts = {
                    name: d.replica_states.get("RUNNING", 0) for name, d in (app.deployments if app else {}).items()
                }
                self.samples.append({"t": round(time.monotonic() - self.t0, 2), **counts})
            except Exception:
                pass
            self.stop.wait(self.interval)

    def __enter__(self):
        self.t0 = time.monotonic()
        if self.ok:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.ok:
            self.thread.join(timeout=10)
        if self.connected:  # before that Ray goes away: a driver left connected to a stopped Ray is killed
            import ray

            ray.shutdown()


def write_json(report: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1))


def pyplot():
    """matplotlib's pyplot on the file-only backend (the bench extra installs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def prompts(data: Optional[str], n: int = 2000) -> list[str]:
    if data:
        return [r["prompt"] for r in load_jsonl(data)]
    return [e.prompt for e in examples(SPLIT_SEEDS["test"], n)]
