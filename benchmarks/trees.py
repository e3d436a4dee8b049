"""Two checkouts of this project side by side: the same gRPC load against ``cascade serve`` from tree A
and from tree B, alternating A/B per round, one replica per deployment, the arithmetic toy pair (serving/default_config.yaml) of
each tree. Measures what a change to the serving path costs (e.g. a restructuring: old tree vs new).

    git worktree add /tmp/old <commit>      # tree A
    python -m benchmarks.trees --a /tmp/old --b . --concurrency 8,32 --rounds 3 --out results/trees.json

Modes per concurrency: cascade, weak-only, strong-only (``force_tier``). Prints the medians over the
rounds and the ratio B/A of throughput and p50; writes JSON. Loopback only; every run is bounded by
--duration. Never asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from benchmarks.common import prompts, write_json
from serving.ops.loadgen import run_load, summarize
from serving.ops.local import free_ports

READY = re.compile(r"^cascade ready: gRPC on (\S+)")
MODES = {"cascade": "", "weak_only": "weak", "strong_only": "strong"}


def pinned_config(tree: Path, workdir: Path) -> Path:
    """The tree's shipped default config with one replica per deployment and free ports."""
    raw = yaml.safe_load((tree / "serving" / "default_config.yaml").read_text())
    for d in [t.setdefault("serve", {}) for t in raw["tiers"]] + [raw.setdefault("router", {})]:
        d.pop("autoscaling_config", None)
        d["num_replicas"] = 1
    for t in raw["tiers"]:  # model paths are relative to the tree's package
        src = t["model"]["source"]
        if not Path(src).is_absolute() and (tree / "serving" / src).exists():
            t["model"]["source"] = str((tree / "serving" / src).resolve())
    grpc_port, http_port, metrics_port = free_ports(3)
    raw.setdefault("server", {}).update(grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "cascade.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class TreeServer:
    """``cascade serve`` from one checkout (its own code on PYTHONPATH, its own embedded Ray)."""

    def __init__(self, tree: Path, workdir: Path):
        cli = "serving.ops.cli" if (tree / "serving" / "ops" / "cli.py").exists() else "serving.cli"
        env = dict(os.environ, PYTHONPATH=str(tree), PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
        env.pop("RAY_ADDRESS", None)
        self.log = workdir / "serve.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", cli, "serve", "--config", str(pinned_config(tree, workdir)), "--address", "local"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=tree,
        )
        self.address = None
        ready = threading.Event()

        def pump():
            with open(self.log, "w") as f:
                for line in self.proc.stdout:
                    f.write(line)
                    if (m := READY.match(line)) and self.address is None:
                        self.address = m.group(1)
                        ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 300
        while not ready.wait(0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cascade serve from {tree} did not become ready:\n{self.log.read_text()[-3000:]}")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="tree A (the baseline checkout)")
    ap.add_argument("--b", default=".", help="tree B (default: this checkout)")
    ap.add_argument("--concurrency", default="8,32")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {list(MODES)}")
    ap.add_argument("--workdir", default="results/trees")
    ap.add_argument("--out", default="results/trees.json")
    args = ap.parse_args()
    trees = {"A": Path(args.a).resolve(), "B": Path(args.b).resolve()}
    conc = [int(c) for c in args.concurrency.split(",")]
    texts = prompts(None)
    runs: dict[str, dict[str, list[dict]]] = {}
    for r in range(args.rounds):
        for side in "AB" if r % 2 == 0 else "BA":  # alternate which tree goes first
            srv = TreeServer(trees[side], Path(args.workdir) / f"{side}{r}")
            try:
                for c in conc:
                    for mode in args.modes.split(","):
                        tier = MODES[mode]
                        res, el = asyncio.run(
                            run_load(srv.address, texts, concurrency=c, duration=args.duration, force_tier=tier)
                        )
                        s = summarize(res, el)
                        runs.setdefault(f"c{c}/{mode}", {}).setdefault(side, []).append(
                            {k: s[k] for k in ("throughput_rps", "latency_ms", "errors", "deferral_share")}
                        )
                        print(
                            f"round {r} tree {side} c={c} {mode}: {s['throughput_rps']:.1f} rps, "
                            f"p50 {s['latency_ms']['p50']:.1f} ms, errors {s['errors'] or '-'}",
                            flush=True,
                        )
            finally:
                srv.close()
    table = {}
    print(f"\n{'run':<22} {'A rps':>8} {'B rps':>8} {'B/A':>6}   {'A p50':>7} {'B p50':>7} {'B/A':>6}")
    for key, sides in runs.items():
        med = {
            s: (statistics.median(x["throughput_rps"] for x in v), statistics.median(x["latency_ms"]["p50"] for x in v))
            for s, v in sides.items()
        }
        table[key] = {
            "A": {"rps": med["A"][0], "p50_ms": med["A"][1]},
            "B": {"rps": med["B"][0], "p50_ms": med["B"][1]},
            "rps_ratio": med["B"][0] / med["A"][0],
            "p50_ratio": med["B"][1] / med["A"][1],
        }
        print(
            f"{key:<22} {med['A'][0]:>8.1f} {med['B'][0]:>8.1f} {table[key]['rps_ratio']:>6.3f}   "
            f"{med['A'][1]:>7.1f} {med['B'][1]:>7.1f} {table[key]['p50_ratio']:>6.3f}"
        )
    write_json(
        {
            "trees": {k: str(v) for k, v in trees.items()},
            "duration_s": args.duration,
            "rounds": args.rounds,
            "medians": table,
            "runs": runs,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
