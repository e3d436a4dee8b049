"""Scale-down drains: a weak tier at 2 replicas that Serve's autoscaler takes down to 1 while long streams run on
both. The replica chosen for removal stops taking requests and finishes its streams within its graceful shutdown
window (`serve.graceful_shutdown_timeout_s`; default the tier's timeout_s + 5 s): none is cut, and requests sent
during the drain are answered by the replica that stays."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from benchmarks.chaos import Chaos
from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc
from serving.config import TOY_CONFIG, load_config, parse_config
from serving.ops.local import cascade_server, wait_for
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.integration
STREAMS, TOKENS = 6, 2500


def drain_config(model: Path):
    raw = load_config(TOY_CONFIG).model_dump(mode="json")
    for t in raw["tiers"]:
        t["model"]["source"] = str(model)
        t["engine"] = {"name": "continuous", "kv_cache_tokens": 65536}
        t["timeout_s"] = 90
        t["serve"]["autoscaling_config"], t["serve"]["num_replicas"] = None, 1
    weak = raw["tiers"][0]["serve"]
    weak["num_replicas"] = None
    weak["max_ongoing_requests"] = 128
    weak["graceful_shutdown_wait_loop_s"] = 0.5
    # Serve's default policy, wanting 1 replica whatever the load (target 100), down from 2 after 6 s; never up
    weak["autoscaling_config"] = {
        "min_replicas": 1,
        "initial_replicas": 2,
        "max_replicas": 2,
        "target_ongoing_requests": 100,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2,
        "upscale_delay_s": 3600,
        "downscale_delay_s": 6,
    }
    raw["router"]["autoscaling_config"], raw["router"]["num_replicas"] = None, 1
    raw["limits"]["max_new_tokens"] = 4000
    return parse_config(raw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = build_tiny_llama(tmp_path_factory.mktemp("tiny-long"), context=4096)
    cfg = drain_config(model)
    assert cfg.tiers[0].deployment_options()["graceful_shutdown_timeout_s"] == 95  # timeout_s + 5
    with cascade_server(cfg, tmp_path_factory.mktemp("drain")) as s:
        yield s


async def _streams(address: str, n: int, during) -> tuple[list, list]:
    """``n`` long streams forced to the weak tier, each as (finished?, tokens, error); ``during()`` runs
    while they do (returns the short requests' outcomes)."""
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.CascadeStub(ch)

        async def one():
            req = pb.GenerateRequest(
                prompt="What is 2 + 3?", max_new_tokens=TOKENS, force_tier="weak", decoding=pb.Decoding(ignore_eos=True)
            )
            last, text = None, 0
            try:
                async for m in stub.GenerateStream(req, timeout=120):
                    last, text = m, text + len(m.text)
            except grpc.aio.AioRpcError as e:
                return (False, text, e.code().name)
            return (bool(last and last.finished), last.tiers[0].completion_tokens if last else 0, "")

        tasks = [asyncio.ensure_future(one()) for _ in range(n)]
        short = await during(stub)
        return list(await asyncio.gather(*tasks)), short


def test_scale_down_finishes_the_streams_of_the_removed_replica(server):
    with Chaos(server.ray_address) as chaos:
        before = wait_for(
            lambda: len(r := chaos.ask("replicas", deployment="tier-weak")) == 2 and r, timeout=60, what="2 replicas"
        )
        seen: dict = {}

        async def during(stub):
            """Waits for the scale-down to begin (a replica leaves RUNNING), sends short requests while the
            removed replica drains, and waits until it is gone."""
            t0, short = time.monotonic(), []
            while time.monotonic() - t0 < 60:
                states = (await asyncio.to_thread(chaos.ask, "status"))["deployments"]["tier-weak"]["replicas"]
                if states.get("RUNNING", 0) < 2:
                    seen["drain_started_s"], seen["states"] = time.monotonic() - t0, states
                    break
                await asyncio.sleep(0.2)
            for _ in range(5):
                req = pb.GenerateRequest(prompt="What is 2 + 3?", max_new_tokens=4, force_tier="weak")
                try:
                    r = await stub.Generate(req, timeout=30)
                    short.append(("OK", r.tier))
                except grpc.aio.AioRpcError as e:
                    short.append((e.code().name, ""))
            while time.monotonic() - t0 < 120:
                if len(await asyncio.to_thread(chaos.ask, "replicas", deployment="tier-weak")) == 1:
                    seen["one_replica_s"] = time.monotonic() - t0
                    break
                await asyncio.sleep(0.2)
            return short

        results, short = asyncio.run(_streams(server.address, STREAMS, during))
        after = chaos.ask("replicas", deployment="tier-weak")
        removed = {r["replica_id"] for r in before} - {r["replica_id"] for r in after}
        logs = Path(chaos.ask("session_dir")) / "logs" / "serve"
        served = {
            p.name: p.read_text(errors="replace").count("stream OK")
            for p in logs.glob("replica_cascade_tier-weak_*.log")
            if any(rid in p.name for rid in removed)
        }
    print(f"drain: {seen}; streams {results}; short requests during the drain {short}; removed {removed}: {served}")
    assert "drain_started_s" in seen and "one_replica_s" in seen  # it did scale down, during the streams
    assert len(removed) == 1
    assert sum(served.values()) >= 1  # the removed replica had streams to finish
    assert all(ok and tokens == TOKENS and not err for ok, tokens, err in results), results  # 0 cut
    assert all(code == "OK" for code, _ in short), short
