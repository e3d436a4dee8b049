"""The vLLM tier under faults, through `cascade serve`: streams hung up mid-way free vLLM's scheduler within 1 s,
and a SIGKILLed engine-core process (a real crash of vLLM's model process) makes the replica report unhealthy
(`check_health`: AsyncLLM errored), Serve replaces it, and meanwhile deferred requests are answered by the weak
tier, flagged degraded. The strong tier is a tiny random Llama (head_dim 32, 2048-token context) on vLLM."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from benchmarks.chaos import Chaos
from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc
from serving.config import TOY_CONFIG, load_config, parse_config
from serving.ops.local import cascade_server, wait_for
from tests.conftest import build_tiny_llama, need_vllm
from tests.integration.test_fault_semantics import EnginePoller

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_vllm()
    model = build_tiny_llama(tmp_path_factory.mktemp("tiny-hd32-long"), hidden_size=64, heads=2, context=2048)
    raw = load_config(TOY_CONFIG).model_dump(mode="json")
    for t in raw["tiers"]:
        t["model"]["source"] = str(model)
        t["serve"]["autoscaling_config"], t["serve"]["num_replicas"] = None, 1
    strong = raw["tiers"][1]
    strong["engine"] = {"name": "vllm", "enforce_eager": True, "max_model_len": 2048}
    strong["timeout_s"] = 60
    strong["serve"]["health_check_period_s"] = 2
    strong["serve"]["health_check_timeout_s"] = 20
    raw["deferral"]["threshold"] = 10.0  # every unforced request defers to the strong tier
    raw["router"]["autoscaling_config"], raw["router"]["num_replicas"] = None, 1
    raw["limits"]["max_new_tokens"] = 1800
    with cascade_server(parse_config(raw), tmp_path_factory.mktemp("vllm-faults"), timeout=600) as s:
        yield s


@pytest.fixture(scope="module")
def chaos(server):
    with Chaos(server.ray_address) as c:
        yield c


def test_hangups_free_vllm_within_a_second(server, chaos):
    req = pb.GenerateRequest(prompt="What is 2 + 3?", max_new_tokens=1500, force_tier="strong")
    req.decoding.ignore_eos = True

    async def hangups(n: int):
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = pb_grpc.CascadeStub(ch)
            calls = [stub.GenerateStream(req, timeout=60) for _ in range(n)]

            async def text(call):  # the first message that carries text
                while (m := await call.read()) is not grpc.aio.EOF and not m.finished:
                    if m.text:
                        return m
                raise AssertionError(f"the stream ended before any text: {m}")

            await asyncio.gather(*(text(c) for c in calls))
            t_text = time.perf_counter()  # hang up once the engine's stats have shown the streams decoding
            while poll.busy_between(t_text, time.perf_counter()) < 1 and time.perf_counter() - t_text < 5:
                await asyncio.sleep(0.05)
            t = time.perf_counter()
            for c in calls:
                c.cancel()
            return t

    with EnginePoller(chaos, "tier-strong") as poll:
        t_cancel = asyncio.run(hangups(8))
        wait_for(lambda: poll.freed_after(t_cancel) < 10, timeout=10, interval=0.05, what="vLLM running 0")
    freed, busy = poll.freed_after(t_cancel), poll.busy_before(t_cancel)
    router = chaos.ask("router_stats")
    print(
        f"vllm: 8 streams hung up (running {busy} before); running 0 {freed:.3f} s after; router {router['inflight']}"
    )
    assert busy >= 1 and freed <= 1.0
    assert router["inflight"] == 0 and not any(router["tier_inflight"].values())


def test_killed_engine_core_makes_the_replica_unhealthy_and_serve_replaces_it(server, chaos):
    before = {r["replica_id"] for r in chaos.ask("replicas", deployment="tier-strong")}
    victim = chaos.ask("kill_engine_core", deployment="tier-strong")
    t0 = time.monotonic()
    answers, unhealthy_seen = [], False
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.CascadeStub(ch)
        while time.monotonic() - t0 < 300:
            try:
                r = stub.Generate(pb.GenerateRequest(prompt="What is 48213 + 99377?", max_new_tokens=8), timeout=30)
                answers.append(("OK", r.tier, r.degraded))
            except grpc.RpcError as e:
                answers.append((e.code().name, "", False))
            d = chaos.ask("status")["deployments"]["tier-strong"]
            unhealthy_seen |= d["status"] != "HEALTHY" or d["replicas"].get("RUNNING", 0) < 1
            now = {r["replica_id"] for r in chaos.ask("replicas", deployment="tier-strong")}
            if unhealthy_seen and d["status"] == "HEALTHY" and now - before:
                break
            time.sleep(0.5)
        replaced_s = time.monotonic() - t0
        after = stub.Generate(pb.GenerateRequest(prompt="What is 48213 + 99377?", max_new_tokens=8), timeout=60)
    print(
        f"killed engine core {victim['engine_core_pid']} of {victim['name']}: replaced after {replaced_s:.1f} s; "
        f"{len(answers)} requests meanwhile: {sorted(set(answers))}"
    )
    assert unhealthy_seen and now - before  # reported unhealthy, and a new replica took its place
    assert all(code == "OK" for code, _, _ in answers)  # answered meanwhile: by the weak tier, flagged
    assert any(degraded and tier == "weak" for _, tier, degraded in answers)
    assert (after.tier, after.degraded) == ("strong", False)  # the new replica answers
