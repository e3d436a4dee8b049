"""Fault benchmark: one fault at a time against `cascade serve` on this machine under mixed load.

    python -m benchmarks.faults --out results/faults.json --plot results/faults.png [--soak-minutes 30]

The load is open-loop Poisson arrivals at ``--load-share`` (0.6) of the capacity measured first (a short closed
loop of gRPC unary calls on the same server), split evenly over gRPC unary, gRPC stream, HTTP unary and HTTP
SSE, every request with its own deadline (``--deadline``, 20 s): a request with no answer by then is *hung*. A
stream is *answered* when it ends marked complete (gRPC ``finished``, SSE a ``finish_reason`` and ``[DONE]``),
*cut* when it ends without either and without an error status (a silently truncated answer), else it failed
with the status it got. Unary calls are retried (at most twice) only where the status says retry:
UNAVAILABLE / RESOURCE_EXHAUSTED (gRPC), 503 / 429 or a refused connection (HTTP), after the retry hint or a backoff (0.5 s doubling
to 4 s); ``--retries`` of them (2).

Faults (``--faults``, comma-separated; each on a fresh server):
- ``router``: SIGKILL the Router replica (its process, found through Ray's actor table); ``router2``: one of 2
- ``weak`` / ``strong``: SIGKILL one of the weak tier's 2 replicas / the strong replica
- ``vllm_core``: SIGKILL the vLLM engine-core process of the strong tier (engine: vllm); its health check fails
  and Serve replaces the replica
- ``hangup``: 100 long streams (50 gRPC, 50 SSE) hung up mid-stream; the weak engine's running count polled
- ``scale``: the weak tier from 3 replicas to 1 (Serve's autoscaler) during 50 long streams
- ``node``: a Ray cluster of four nodes on this machine (``benchmarks.cluster.LocalCluster``: a head with the Router
  and Serve's proxy, two nodes of the weak pool, one of the strong pool), ``cascade serve`` deployed onto it; the
  weak node holding a replica is SIGKILLed whole (raylet, workers); the lost replica must come back on the
  surviving node of the pool. Its load is ``--load-share`` of the capacity measured on that cluster (the path
  through Serve's proxy)
- ``--soak-minutes M``: mixed load for M minutes, no fault; errors, p99 first vs last window, RSS / threads /
  fds of every replica over time

Per fault: answered %, hung, failures by status, time back to full rate (the first second after the fault from
which the 3 s average of answers per second is back to 90 % of the rate before it), each against the issue's
aim. Prints a table, writes JSON and a PNG (answers per second around each fault). Never asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np

from benchmarks.chaos import Chaos
from benchmarks.cluster import CLUSTER_ENV, LocalCluster
from benchmarks.common import pyplot, write_json
from serving.config import TOY_CONFIG, load_config, parse_config
from serving.ops.loadgen import arrivals, run_load
from serving.ops.local import cascade_server, wait_for
from serving.tasks.arithmetic import examples

KINDS = ("grpc_unary", "grpc_stream", "http_unary", "http_sse")
RETRY_GRPC = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
RETRY_HTTP = (503, 429)


# ---- configs ----------------------------------------------------------------------------------------------
def fixed(raw: dict, weak: int = 1, strong: int = 1) -> dict:
    for t, n in zip(raw["tiers"], (weak, strong)):
        t["serve"]["autoscaling_config"], t["serve"]["num_replicas"] = None, n
    raw["router"]["autoscaling_config"], raw["router"]["num_replicas"] = None, 1
    return raw


def shipped(weak: int = 1, strong: int = 1, vllm: bool = False, routers: int = 1):
    raw = fixed(load_config(TOY_CONFIG).model_dump(mode="json"), weak, strong)
    raw["router"]["num_replicas"] = routers
    if vllm:
        s = raw["tiers"][1]
        s["engine"] = {"name": "vllm", "enforce_eager": True}
        s["timeout_s"] = 30
        s["serve"]["health_check_period_s"] = 2
        s["serve"]["health_check_timeout_s"] = 10
    return parse_config(raw)


def long_model(workdir: Path) -> Path:
    from tests.conftest import build_tiny_llama  # the tests' tiny random Llama, here with a 4096-token context

    out = workdir / "tiny-long"
    return out if out.exists() else build_tiny_llama(out, context=4096)


def long_config(model: Path, weak_scale_down: Optional[int] = None):
    raw = fixed(load_config(TOY_CONFIG).model_dump(mode="json"))
    for t in raw["tiers"]:
        t["model"]["source"] = str(model)
        t["engine"] = {"name": "continuous", "kv_cache_tokens": 200_000, "max_requests_per_batch": 128}
        t["timeout_s"] = 120
        t["serve"]["max_ongoing_requests"] = 160
        t["serve"]["max_queued_requests"] = -1
    raw["limits"]["max_new_tokens"] = 4000
    if weak_scale_down:
        w = raw["tiers"][0]["serve"]
        w["num_replicas"] = None
        w["graceful_shutdown_wait_loop_s"] = 0.5
        w["autoscaling_config"] = {
            "min_replicas": 1,
            "initial_replicas": weak_scale_down,
            "max_replicas": weak_scale_down,
            "target_ongoing_requests": 150,
            "metrics_interval_s": 0.5,
            "look_back_period_s": 2,
            "upscale_delay_s": 3600,
            "downscale_delay_s": 15,
        }
    return parse_config(raw)


# ---- the mixed load -----------------------------------------------------------------------------------------
class Mixed:
    """Open-loop mixed load over both fronts; one record per request (kind, start, end, status, retries)."""

    def __init__(self, grpc_address: str, http_url: str, prompts: list[str], deadline: float, retries: int = 2):
        self.grpc_address, self.http_url, self.prompts, self.deadline = grpc_address, http_url, prompts, deadline
        self.retries = retries
        self.records: list[dict] = []
        self.t0 = 0.0

    async def run(self, rate: float, duration: float, seed: int = 0) -> list[dict]:
        import grpc
        import httpx

        from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc

        times = arrivals(rate, duration, seed)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with (
            grpc.aio.insecure_channel(self.grpc_address) as ch,
            httpx.AsyncClient(limits=limits, timeout=self.deadline) as http,
        ):
            stub = pb_grpc.CascadeStub(ch)
            self.t0 = time.perf_counter()

            async def fire(i: int) -> None:
                kind, prompt = KINDS[i % 4], self.prompts[i % len(self.prompts)]
                start = time.perf_counter() - self.t0
                status, retries, extra = await self._one(kind, stub, http, prompt)
                self.records.append(
                    {"kind": kind, "t": start, "end": time.perf_counter() - self.t0, "status": status}
                    | {"retries": retries, **extra}
                )

            # each request's task is made at its arrival time: made all up front (100 000 of them in a 30-minute
            # soak) they kept this client busy for its first seconds, which then fired in bursts the server refused
            pending: set[asyncio.Task] = set()
            for i, at in enumerate(times):
                if (wait := at - (time.perf_counter() - self.t0)) > 0:
                    await asyncio.sleep(wait)
                task = asyncio.ensure_future(fire(i))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*list(pending))
        return self.records

    async def _one(self, kind: str, stub, http, prompt: str) -> tuple[str, int, dict]:
        retries = 0
        while True:
            status, hint_s, extra = await getattr(self, "_" + kind)(stub, http, prompt, retries > 0)
            if kind.endswith("unary") and hint_s is not None and retries < self.retries:
                await asyncio.sleep(max(hint_s, min(0.5 * 2**retries, 4.0)))  # the hint, or backing off to 4 s
                retries += 1
                continue
            return status, retries, extra

    async def _grpc_unary(self, stub, http, prompt, retry=False):
        import grpc

        from serving._proto.cascade.v1 import cascade_pb2 as pb

        try:  # a retry waits for the channel to reconnect (a restarted server) instead of failing fast
            r = await stub.Generate(pb.GenerateRequest(prompt=prompt), timeout=self.deadline, wait_for_ready=retry)
            return "OK", None, {"degraded": r.degraded}
        except grpc.aio.AioRpcError as e:
            code = e.code().name
            if code == "DEADLINE_EXCEEDED":
                return "hung", None, {}
            hint = dict(e.trailing_metadata() or ()).get("retry-after-ms")
            return code, ((int(hint) / 1e3 if hint else 0.5) if code in RETRY_GRPC else None), {"details": e.details()}

    async def _grpc_stream(self, stub, http, prompt, retry=False):
        import grpc

        from serving._proto.cascade.v1 import cascade_pb2 as pb

        last = None
        try:
            async for m in stub.GenerateStream(pb.GenerateRequest(prompt=prompt), timeout=self.deadline):
                last = m
        except grpc.aio.AioRpcError as e:
            code = e.code().name
            return ("hung" if code == "DEADLINE_EXCEEDED" else code), None, {"details": e.details()}
        if last is None or not last.finished:
            return "cut", None, {}
        return "OK", None, {"degraded": last.degraded}

    async def _http_unary(self, stub, http, prompt, retry=False):
        import httpx

        body = {"model": "cascade", "messages": [{"role": "user", "content": prompt}]}
        try:
            r = await http.post(self.http_url + "/chat/completions", json=body, timeout=self.deadline)
        except httpx.TimeoutException:
            return "hung", None, {}
        except httpx.ConnectError:  # refused before a byte was sent (no server on the port yet): safe to retry
            return "http_ConnectError", 0.5, {}
        except httpx.HTTPError as e:
            return f"http_{type(e).__name__}", None, {}
        if r.status_code == 200:
            return "OK", None, {"degraded": bool(r.json().get("cascade", {}).get("degraded"))}
        hint = r.headers.get("retry-after")
        retry = (float(hint) if hint else 0.5) if r.status_code in RETRY_HTTP else None
        return f"http_{r.status_code}", retry, {}

    async def _http_sse(self, stub, http, prompt, retry=False):
        import httpx

        body = {"model": "cascade", "messages": [{"role": "user", "content": prompt}], "stream": True}
        finish, done, degraded = None, False, False
        try:
            async with asyncio.timeout(self.deadline):
                async with http.stream("POST", self.http_url + "/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        await r.aread()
                        return f"http_{r.status_code}", None, {}
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if line == "data: [DONE]":
                            done = True
                            continue
                        ev = json.loads(line[6:])
                        if "error" in ev:
                            return f"sse_error_{ev['error'].get('code')}", None, {"details": ev["error"]["message"]}
                        for c in ev.get("choices") or ():
                            finish = c.get("finish_reason") or finish
                        degraded |= bool((ev.get("cascade") or {}).get("degraded"))
        except TimeoutError:
            return "hung", None, {}
        except httpx.HTTPError as e:
            return f"http_{type(e).__name__}", None, {}
        return ("OK" if finish and done else "cut"), None, {"degraded": degraded}


def measure_capacity(server, prompts: list[str], seconds: float = 8.0) -> float:
    """Answers per second of a closed loop of 8 gRPC unary callers (the cascade's mix of prompts)."""
    res, elapsed = asyncio.run(run_load(server.address, prompts, concurrency=8, duration=seconds, timeout=30))
    return sum(r["code"] == "OK" for r in res) / elapsed


def summarize(records: list[dict], fault_at: Optional[float], duration: float) -> dict:
    by_status = Counter(r["status"] for r in records)
    unary = [r for r in records if r["kind"].endswith("unary")]
    streams = [r for r in records if not r["kind"].endswith("unary")]
    share = lambda rs: (sum(r["status"] == "OK" for r in rs) / len(rs)) if rs else float("nan")
    per_s = np.zeros(int(math.ceil(duration + 30)))
    for r in records:
        if r["status"] == "OK":
            per_s[min(int(r["end"]), len(per_s) - 1)] += 1
    out = {
        "requests": len(records),
        "answered_share": share(records),
        "unary_answered_share": share(unary),
        "stream_answered_share": share(streams),
        "hung": by_status.get("hung", 0),
        "cut": by_status.get("cut", 0),
        "failures": {k: v for k, v in by_status.items() if k != "OK"},
        "degraded": sum(bool(r.get("degraded")) for r in records),
        "retried": sum(r["retries"] > 0 for r in records),
        "answers_per_s": per_s[: int(math.ceil(duration))].tolist(),
        "failure_details": dict(Counter(r.get("details", "")[:160] for r in records if r["status"] != "OK")),
    }
    if fault_at is not None:
        before = per_s[max(0, int(fault_at) - 8) : int(fault_at)]
        base = float(before.mean()) if len(before) else float("nan")
        out["rate_before"] = base
        back = None
        for s in range(int(fault_at), int(duration) - 3):
            if per_s[s : s + 3].mean() >= 0.9 * base:
                back = max(0.0, s - fault_at)  # the second the fault fell in counts from the fault
                break
        out["back_to_full_rate_s"] = back
    lat = sorted(r["end"] - r["t"] for r in records if r["status"] == "OK")
    out["p99_ms"] = float(np.percentile(lat, 99) * 1e3) if lat else float("nan")
    return out


def faulted_run(server, rate: float, prompts, args, fault, before: float, after: float) -> dict:
    """Mixed load for before + after s; ``fault(chaos)`` at ``before`` s, in a thread (returns a dict)."""
    load = Mixed(server.address, server.http_url, prompts, args.deadline, args.retries)
    box: dict[str, Any] = {}
    with Chaos(server.ray_address) as chaos:
        base = chaos.ask("router_stats")  # what the server answered before this run (a capacity measurement)

        def inject():
            time.sleep(before)
            box["at"] = time.perf_counter() - load.t0
            try:
                box["fault"] = fault(chaos)
            except Exception as e:
                box["fault"] = {"error": f"{type(e).__name__}: {e}"}

        th = threading.Thread(target=inject, daemon=True)
        th.start()
        records = asyncio.run(load.run(rate, before + after, seed=args.seed))
        th.join(timeout=300)
        box["status_after"] = chaos.ask("status")
        try:  # receipts vs answers: every answer has a receipt and counted cost, no failed request has one
            router = chaos.ask("router_stats")
            box["receipts"] = {
                "router_receipts": router["costs"]["requests"] - base["costs"]["requests"],
                "router_ok": router["requests_by_code"].get("OK", 0) - base["requests_by_code"].get("OK", 0),
                "client_ok": sum(r["status"] == "OK" for r in records),
            }
        except Exception as e:
            box["receipts"] = {"error": str(e)}
    return summarize(records, box.get("at", before), before + after) | {
        "fault_at_s": box.get("at"),
        "fault": box.get("fault"),
        "status_after": box.get("status_after"),
        "receipts": box["receipts"],
    }


def kill_and_watch(deployment: str, replicas: int, engine_core: bool = False):
    """A fault: SIGKILL one replica (or its vLLM engine core); then the seconds until the deployment is
    HEALTHY again with ``replicas`` running replicas, a new one among them."""

    def fault(chaos: Chaos) -> dict:
        before = {r["replica_id"] for r in chaos.ask("replicas", deployment=deployment)}
        t0 = time.monotonic()
        victim = chaos.ask("kill_engine_core" if engine_core else "kill", deployment=deployment)

        def whole():
            d = chaos.ask("status")["deployments"].get(deployment, {})
            now = {r["replica_id"] for r in chaos.ask("replicas", deployment=deployment)}
            return (
                d.get("status") == "HEALTHY"
                and d.get("replicas", {}).get("RUNNING", 0) >= replicas
                and bool(now - before)
                and now
            )

        try:
            now = wait_for(whole, timeout=240, interval=0.5, what=f"{deployment} replaced")
            return victim | {"replaced_after_s": time.monotonic() - t0, "new": sorted(now - before)}
        except TimeoutError:
            return victim | {"replaced_after_s": None}

    return fault


# ---- a pool's node --------------------------------------------------------------------------------------------
NODE_POOLS = {"weak-a": {"weak_pool": 4}, "weak-b": {"weak_pool": 4}, "strong": {"strong_pool": 4}}
# Ray notices a dead node after its GCS misses health checks: every 1 s, 3 misses (Ray's default: 3 s x 5)
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def node_fault(work: Path, prompts: list[str], args) -> dict:
    import os

    env = {**CLUSTER_ENV, **FAST_NODE_DEATH}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the chaos agent (a subprocess) joins the cluster with these
    try:
        with LocalCluster(work / "node", NODE_POOLS, head_resources={"ingress": 4}, env=FAST_NODE_DEATH) as cluster:
            cfg = shipped(weak=2)
            cfg.router.ray_actor_options["resources"] = {"ingress": 1}  # the Router beside Serve's proxy, on the head
            with cascade_server(cfg, work / "node-serve", timeout=600, cluster=cluster) as server:
                cap = measure_capacity(server, prompts)
                rate = args.rate or args.load_share * cap
                print(f"node: capacity through the cluster's proxy {cap:.1f} answers/s; offering {rate:.1f} req/s")

                def fault(chaos: Chaos) -> dict:
                    reps = chaos.ask("replicas", deployment="tier-weak")
                    placed = {r["replica_id"]: cluster.node_of(r["pid"]) for r in reps}
                    victim = placed[reps[0]["replica_id"]]
                    dead = reps[0]["node_id"]
                    t0 = time.monotonic()
                    cluster.kill(victim)

                    def back():
                        d = chaos.ask("status")["deployments"].get("tier-weak", {})
                        now = chaos.ask("replicas", deployment="tier-weak")
                        ok = d.get("status") == "HEALTHY" and len(now) == 2 and all(r["node_id"] != dead for r in now)
                        return ok and now

                    try:
                        now = wait_for(back, timeout=240, interval=0.5, what="tier-weak rescheduled")
                        after = {r["replica_id"]: cluster.node_of(r["pid"]) for r in now}
                        return {"killed": victim, "placed_before": placed, "placed_after": after} | {
                            "replaced_after_s": time.monotonic() - t0
                        }
                    except TimeoutError:
                        return {"killed": victim, "placed_before": placed, "replaced_after_s": None}

                r = faulted_run(server, rate, prompts, args, fault, args.before, args.after + 30)
                return r | {"capacity_rps": cap, "rate_rps": rate}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- long-stream faults ---------------------------------------------------------------------------------------
async def _hangups(server, n: int, tokens: int, chaos: Chaos) -> dict:
    import grpc
    import httpx

    from serving._proto.cascade.v1 import cascade_pb2 as pb
    from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc

    started, got = asyncio.Event(), Counter()
    body = {
        "model": "cascade:weak",
        "messages": [{"role": "user", "content": "What is 2 + 3?"}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
    }
    req = pb.GenerateRequest(prompt="What is 2 + 3?", max_new_tokens=tokens, force_tier="weak")
    req.decoding.ignore_eos = True
    async with grpc.aio.insecure_channel(server.address) as ch, httpx.AsyncClient(timeout=120) as http:
        stub = pb_grpc.CascadeStub(ch)

        async def g():
            call = stub.GenerateStream(req, timeout=120)
            try:
                async for m in call:
                    if m.text:
                        got["grpc"] += 1
                        started.set()
                        await asyncio.sleep(3600)
            finally:
                call.cancel()

        async def h():
            async with http.stream("POST", server.http_url + "/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if _has_text(line):
                        got["http"] += 1
                        started.set()
                        await asyncio.sleep(3600)

        tasks = [asyncio.ensure_future(g() if i % 2 else h()) for i in range(n)]
        await asyncio.wait_for(started.wait(), 60)
        t_end = time.monotonic() + 20
        while sum(got.values()) < n and time.monotonic() < t_end:  # every stream under way (or 20 s)
            await asyncio.sleep(0.05)
        busy = (await asyncio.to_thread(chaos.ask, "tier_stats", deployment="tier-weak"))["running"]
        t = time.perf_counter()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        cancelled_s = time.perf_counter() - t
    return {"streams": n, "had_text": dict(got), "engine_running_before": busy, "t_cancel": t, "cancel_s": cancelled_s}


def hangup_fault(workdir: Path, args) -> dict:
    with (
        cascade_server(long_config(long_model(workdir)), workdir / "hangup") as server,
        Chaos(server.ray_address) as chaos,
    ):
        base = chaos.ask("tier_stats", deployment="tier-weak")
        res = asyncio.run(_hangups(server, 100, 3000, chaos))
        samples = []
        while time.perf_counter() - res["t_cancel"] < 10:
            a = time.perf_counter()
            s = chaos.ask("tier_stats", deployment="tier-weak")
            samples.append((a - res["t_cancel"], time.perf_counter() - res["t_cancel"], s["running"], s["waiting"]))
            if s["running"] == 0 and s["waiting"] == 0:
                break
            time.sleep(0.05)
        router = wait_for(
            lambda: (r := chaos.ask("router_stats"))["inflight"] == 0 and r, timeout=10, what="router idle"
        )
        after = chaos.ask("tier_stats", deployment="tier-weak")
    zero = next((b for a, b, r, w in samples if r == 0 and w == 0), None)
    res.pop("t_cancel")
    return res | {
        "engine_zero_after_s": zero,
        "router_inflight": router["inflight"],
        "router_tier_inflight": router["tier_inflight"],
        "cancelled_counted": router["requests_by_code"].get("CANCELLED", 0),
        "tier_threads_before_after": [base["threads"], after["threads"]],
    }


def scale_fault(workdir: Path, args) -> dict:
    import grpc

    from serving._proto.cascade.v1 import cascade_pb2 as pb
    from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc

    tokens = 1000
    cfg = long_config(long_model(workdir), weak_scale_down=3)
    with cascade_server(cfg, workdir / "scale") as server, Chaos(server.ray_address) as chaos:
        wait_for(lambda: len(chaos.ask("replicas", deployment="tier-weak")) == 3, timeout=120, what="3 replicas")
        timeline: list = []
        stop = threading.Event()

        def watch():
            t0 = time.monotonic()
            while not stop.is_set():
                d = chaos.ask("status")["deployments"]["tier-weak"]["replicas"]
                timeline.append((round(time.monotonic() - t0, 1), d))
                stop.wait(0.5)

        th = threading.Thread(target=watch, daemon=True)
        th.start()

        async def streams():
            async with grpc.aio.insecure_channel(server.address) as ch:
                stub = pb_grpc.CascadeStub(ch)

                async def one():
                    req = pb.GenerateRequest(prompt="What is 2 + 3?", max_new_tokens=tokens, force_tier="weak")
                    req.decoding.ignore_eos = True
                    last, t0 = None, time.perf_counter()
                    try:
                        async for m in stub.GenerateStream(req, timeout=180):
                            last = m
                    except grpc.aio.AioRpcError as e:
                        return {"status": e.code().name, "s": time.perf_counter() - t0}
                    ok = last is not None and last.finished and last.tiers[0].completion_tokens == tokens
                    return {"status": "OK" if ok else "cut", "s": time.perf_counter() - t0}

                return await asyncio.gather(*(one() for _ in range(50)))

        results = asyncio.run(streams())
        time.sleep(2)
        stop.set()
        th.join(timeout=10)
        final = chaos.ask("replicas", deployment="tier-weak")
    codes = Counter(r["status"] for r in results)
    return {
        "streams": 50,
        "tokens": tokens,
        "codes": dict(codes),
        "cut": sum(v for k, v in codes.items() if k != "OK"),
        "stream_s": {"min": min(r["s"] for r in results), "max": max(r["s"] for r in results)},
        "replicas_timeline": timeline,
        "replicas_at_end": len(final),
    }


def soak(server, rate, prompts, args) -> dict:
    minutes = args.soak_minutes
    load = Mixed(server.address, server.http_url, prompts, args.deadline)
    procs: list = []
    stop = threading.Event()
    with Chaos(server.ray_address) as chaos:

        def sample():
            t0 = time.monotonic()
            while not stop.is_set():
                procs.append({"t": time.monotonic() - t0, "procs": chaos.ask("procs")})
                stop.wait(15)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        records = asyncio.run(load.run(rate, minutes * 60, seed=args.seed + 1))
        stop.set()
        th.join(timeout=30)
    dur = minutes * 60
    window = min(300.0, dur / 3)
    lat = lambda rs: float(np.percentile([r["end"] - r["t"] for r in rs], 99) * 1e3) if rs else float("nan")
    ok = [r for r in records if r["status"] == "OK"]
    first, last = [r for r in ok if r["t"] < window], [r for r in ok if r["t"] >= dur - window]
    warm = [p for p in procs if p["t"] >= window] or procs
    growth = {}
    for p in warm[0]["procs"] if warm else []:
        end = next((q for q in warm[-1]["procs"] if q["pid"] == p["pid"]), None)
        if end:
            growth[p["name"].split("#")[1] + "#" + p["name"].split("#")[2]] = {
                "rss_growth": end["rss"] / p["rss"] - 1,
                "threads": [p["threads"], end["threads"]],
                "fds": [p["fds"], end["fds"]],
            }
    s = summarize(records, None, dur)
    return {
        "minutes": minutes,
        "window_s": window,
        "requests": len(records),
        "errors": s["failures"],
        "errors_by_minute": dict(Counter(int(r["t"] // 60) for r in records if r["status"] != "OK")),
        "p99_first_ms": lat(first),
        "p99_last_ms": lat(last),
        "p99_ratio": lat(last) / lat(first) if first and last else float("nan"),
        "replicas": growth,
        "samples": procs,
        "answers_per_s": s["answers_per_s"],
    }


# ---- verdicts -------------------------------------------------------------------------------------------------
def flat(start: int, end: int) -> bool:
    """A count that did not grow over the soak: at most 2 more (a pool's worker started late), or 5 %."""
    return end <= start + max(2, 0.05 * start)


def verdict(name: str, r: dict) -> tuple[str, bool]:
    if name in ("router", "router2"):
        ok = r["unary_answered_share"] >= 0.99 and r["hung"] == 0 and r["cut"] == 0
        ok &= r.get("back_to_full_rate_s") is not None and r["back_to_full_rate_s"] <= 30
        return "unary >= 99 %, streams: 0 hung, failures with a status; full rate in <= 30 s", ok
    if name in ("weak", "strong"):
        return ">= 99.5 % answered, 0 hung", r["answered_share"] >= 0.995 and r["hung"] == 0
    if name == "node":
        f = r.get("fault") or {}
        after = set((f.get("placed_after") or {}).values())
        ok = f.get("replaced_after_s") is not None and len(after) == 1 and f.get("killed") not in after
        return "replicas rescheduled on the surviving node; >= 99 % answered", ok and r["answered_share"] >= 0.99
    if name == "vllm_core":
        replaced = (r.get("fault") or {}).get("replaced_after_s") is not None
        return "replica unhealthy -> replaced; >= 99 % answered", replaced and r["answered_share"] >= 0.99
    if name == "hangup":
        z = r.get("engine_zero_after_s")
        ok = z is not None and z <= 1.0 and r["router_inflight"] == 0 and not any(r["router_tier_inflight"].values())
        return "engine running 0 within 1 s; no leaked tasks", ok
    if name == "scale":
        return "0 streams cut (3 -> 1 replicas, 50 streams)", r["cut"] == 0 and r["replicas_at_end"] == 1
    if name == "soak":
        ok = not r["errors"] and r["p99_ratio"] <= 1.2
        ok &= all(g["rss_growth"] <= 0.05 for g in r["replicas"].values())
        ok &= all(flat(*g["threads"]) and flat(*g["fds"]) for g in r["replicas"].values())
        return "0 errors; p99 last <= 1.2 x first; RSS <= +5 %; threads, fds flat", ok
    return "?", False


def row(name: str, r: dict) -> str:
    aim, ok = verdict(name, r)
    if name == "hangup":
        z = r.get("engine_zero_after_s")
        got = (
            f"{r['streams']} streams ({sum(r['had_text'].values())} under way), running {r['engine_running_before']} -> 0"
            f" after {z if z is None else round(z, 3)} s; router in flight {r['router_inflight']}, per tier "
            f"{r['router_tier_inflight']}; tier threads {r['tier_threads_before_after']}"
        )
    elif name == "scale":
        got = f"{r['codes']}; {r['replicas_at_end']} replica(s) at the end; streams took {r['stream_s']}"
    elif name == "soak":
        got = (
            f"{r['minutes']} min, {r['requests']} requests, errors {r['errors']} (by minute {r['errors_by_minute']}); "
            f"p99 {r['p99_first_ms']:.0f} -> "
            f"{r['p99_last_ms']:.0f} ms (x{r['p99_ratio']:.2f}); "
            + ", ".join(
                f"{k}: RSS {v['rss_growth']:+.1%} thr {v['threads']} fds {v['fds']}" for k, v in r["replicas"].items()
            )
        )
    else:
        f = r.get("fault") or {}
        extra = f" replaced after {f['replaced_after_s']:.1f} s;" if f.get("replaced_after_s") else ""
        if name == "node":
            extra += f" killed {f.get('killed')}: {f.get('placed_before')} -> {f.get('placed_after')};"
        rc = r.get("receipts", {})
        extra += f" receipts {rc.get('router_receipts')} / router OK {rc.get('router_ok')} / client OK {rc.get('client_ok')};"
        got = (
            f"{r['requests']} req: answered {r['answered_share']:.2%} (unary {r['unary_answered_share']:.2%}, "
            f"streams {r['stream_answered_share']:.2%}), hung {r['hung']}, cut {r['cut']}, degraded "
            f"{r['degraded']}, retried {r['retried']}; failures {r['failures']};{extra} back to full rate "
            f"{r.get('back_to_full_rate_s')} s"
        )
    return f"{name:<10} {'MET' if ok else 'MISSED':<7} aim: {aim}\n{'':<18}{got}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faults", default="router,weak,strong,vllm_core,node,hangup,scale")
    ap.add_argument("--before", type=float, default=10.0, help="seconds of load before the fault")
    ap.add_argument("--after", type=float, default=30.0, help="seconds of load after the fault")
    ap.add_argument("--load-share", type=float, default=0.6, help="share of the measured capacity offered")
    ap.add_argument("--rate", type=float, help="requests/s offered (default: load-share x capacity)")
    ap.add_argument("--deadline", type=float, default=20.0)
    ap.add_argument("--retries", type=int, default=2, help="retries of a unary call whose status says retry")
    ap.add_argument("--soak-minutes", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/faults.json")
    ap.add_argument("--plot", default="results/faults.png")
    args = ap.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    prompts = [e.prompt for e in examples(3, 400)]
    random.Random(args.seed).shuffle(prompts)
    report: dict[str, Any] = {"args": vars(args), "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rate = args.rate
        if rate is None and (set(faults) & {"router", "router2", "weak", "strong", "vllm_core"} or args.soak_minutes):
            with cascade_server(shipped(), work / "capacity") as server:
                cap = measure_capacity(server, prompts)
            rate = args.load_share * cap
            report["capacity_rps"] = cap
            print(f"capacity {cap:.1f} answers/s (closed loop, 8 gRPC callers); offering {rate:.1f} req/s mixed")
        report["rate_rps"] = rate
        plan = {
            "router": (lambda: shipped(), kill_and_watch("Router", 1)),
            "router2": (lambda: shipped(routers=2), kill_and_watch("Router", 2)),
            "weak": (lambda: shipped(weak=2), kill_and_watch("tier-weak", 2)),
            "strong": (lambda: shipped(), kill_and_watch("tier-strong", 1)),
            "vllm_core": (lambda: shipped(vllm=True), kill_and_watch("tier-strong", 1, engine_core=True)),
        }
        for name in faults:
            t0 = time.monotonic()
            if name in plan:
                make, fault = plan[name]
                after = args.after + (60 if name == "vllm_core" else 0)
                with cascade_server(make(), work / name, timeout=600) as server:
                    r = faulted_run(server, rate, prompts, args, fault, args.before, after)
            elif name == "node":
                r = node_fault(work, prompts, args)
            elif name == "hangup":
                r = hangup_fault(work, args)
            elif name == "scale":
                r = scale_fault(work, args)
            else:
                raise SystemExit(f"unknown fault {name!r}")
            r["wall_s"] = time.monotonic() - t0
            r["aim"], r["met"] = verdict(name, r)
            report["results"][name] = r
            print(row(name, r), flush=True)
            write_json(report, args.out)
        if args.soak_minutes:
            with cascade_server(shipped(), work / "soak") as server:
                r = soak(server, rate, prompts, args)
            r["aim"], r["met"] = verdict("soak", r)
            report["results"]["soak"] = r
            print(row("soak", r), flush=True)
    write_json(report, args.out)
    print("\n" + "\n".join(row(n, r) for n, r in report["results"].items()))
    plot(report, args.plot)
    print(f"wrote {args.out} and {args.plot}")


def plot(report: dict, path: str) -> None:
    plt = pyplot()
    series = {n: r for n, r in report["results"].items() if "answers_per_s" in r}
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, r in series.items():
        ax.plot(r["answers_per_s"], label=name)
        if r.get("fault_at_s") is not None:
            ax.axvline(r["fault_at_s"], ls=":", color=ax.lines[-1].get_color())
    ax.set(xlabel="s into the run (dotted: the fault)", ylabel="answers / s", title="answers per second under faults")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()


def _has_text(line: str) -> bool:
    """An SSE line with a chunk whose delta carries text."""
    if not line.startswith("data: {"):
        return False
    return any(c.get("delta", {}).get("content") for c in json.loads(line[6:]).get("choices", []))
