"""What a client sees when a part fails, and what a hang-up frees, against a real `cascade serve` (both fronts,
auth on): a tier replica SIGKILLed after a stream's first byte ends the stream with UNAVAILABLE (gRPC) or an SSE
error event (HTTP), never a hang and never an answer marked complete; a client that cancels or disconnects
mid-stream frees the engine (running back to 0 within 1 s on the continuous and the static engine) and the
router's counts (in flight, per-tier in flight, which load-aware deferral reads); and neither the bearer token
nor the prompt text reaches the logs at the default level.

The tiers are a tiny random Llama with a 4096-token context (both tiers, weak on `continuous`, strong on
`static`), so a stream with `ignore_eos` runs for seconds: time to hang up in the middle of it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest

from benchmarks.chaos import Chaos
from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc
from serving.config import TOY_CONFIG, load_config, parse_config
from serving.ops.local import cascade_server, wait_for
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.integration
TOKEN = "tok-7f3a91-never-in-a-log"
PROMPT = "Quartzzebra wobbles 9137 + 2648?"  # distinctive text: must not appear in any log line
LONG = 1500  # tokens of a long stream (~4 s alone on this machine)
AUTH = [("authorization", f"Bearer {TOKEN}")]


def long_config(model: Path, replicas: int = 1):
    raw = load_config(TOY_CONFIG).model_dump(mode="json")
    for t, engine in zip(raw["tiers"], ({"name": "continuous", "kv_cache_tokens": 65536}, {"name": "static"})):
        t["model"]["source"] = str(model)
        t["engine"] = engine
        t["timeout_s"] = 60
        t["serve"]["autoscaling_config"] = None
        t["serve"]["num_replicas"] = replicas
    raw["router"]["autoscaling_config"], raw["router"]["num_replicas"] = None, 1
    raw["limits"]["max_new_tokens"] = 4000
    raw["server"]["auth"] = {"token_sha256": [hashlib.sha256(TOKEN.encode()).hexdigest()]}
    return parse_config(raw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = build_tiny_llama(tmp_path_factory.mktemp("tiny-long"), context=4096)
    with cascade_server(long_config(model), tmp_path_factory.mktemp("semantics")) as s:
        yield s


@pytest.fixture(scope="module")
def chaos(server):
    with Chaos(server.ray_address) as c:
        yield c


def _long_request(tier: str, n: int = LONG) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt=PROMPT, max_new_tokens=n, force_tier=tier, decoding=pb.Decoding(ignore_eos=True))


def _sse_body(tier: str, n: int = LONG) -> dict:
    return {
        "model": f"cascade:{tier}",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": n,
        "ignore_eos": True,
        "stream": True,
    }


def _healthy(chaos: Chaos, deployment: str, replicas: int = 1) -> bool:
    d = chaos.ask("status")["deployments"].get(deployment, {})
    return d.get("status") == "HEALTHY" and d.get("replicas", {}).get("RUNNING", 0) >= replicas


def _wait_whole(chaos: Chaos) -> None:
    for d in ("tier-weak", "tier-strong", "Router"):
        wait_for(lambda d=d: _healthy(chaos, d), timeout=180, what=f"{d} healthy with its replica")


# ---- part 1: a tier dies after the first byte ------------------------------------------------------------
def test_grpc_stream_whose_tier_dies_after_the_first_byte_ends_unavailable(server, chaos):
    _wait_whole(chaos)
    messages, victim, t0 = [], None, time.perf_counter()
    with grpc.insecure_channel(server.address) as ch:
        stream = pb_grpc.CascadeStub(ch).GenerateStream(_long_request("weak"), metadata=AUTH, timeout=60)
        try:
            for m in stream:
                messages.append(m)
                if victim is None:
                    victim = chaos.ask("kill", deployment="tier-weak")
            e = None
        except grpc.RpcError as err:
            e = err
    elapsed = time.perf_counter() - t0
    assert victim is not None and e is not None, (messages[:3], e)
    assert messages[0].text  # the kill came after the first byte of the answer
    print(f"killed {victim['name']} mid-stream: {len(messages)} messages, then {e.code().name}: {e.details()!r}")
    assert e.code() == grpc.StatusCode.UNAVAILABLE
    assert "'weak'" in e.details() and "died" in e.details()
    assert not any(m.finished for m in messages)  # never marked complete
    assert sum(len(m.text) for m in messages) < LONG
    assert elapsed < 30  # not a hang: the failure came at once, well inside the deadline
    _wait_whole(chaos)  # Serve replaced the replica; the next stream is whole
    with grpc.insecure_channel(server.address) as ch:
        done = list(pb_grpc.CascadeStub(ch).GenerateStream(_long_request("weak", 50), metadata=AUTH, timeout=60))
    assert done[-1].finished and done[-1].tier == "weak"


def test_sse_stream_whose_tier_dies_after_the_first_byte_ends_with_an_error_event(server, chaos):
    _wait_whole(chaos)
    events, t0 = [], time.perf_counter()
    with httpx.Client(timeout=60) as http:
        headers = {"authorization": f"Bearer {TOKEN}"}
        url = server.http_url + "/chat/completions"
        with http.stream("POST", url, json=_sse_body("strong"), headers=headers) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 3:
                    chaos.ask("kill", deployment="tier-strong")
    elapsed = time.perf_counter() - t0
    print(f"SSE after the kill: {len(events)} events, last {events[-1][:300]}")
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert last["error"]["type"] == "service_unavailable" and "'strong'" in last["error"]["message"]
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)  # nothing says the answer is complete
    assert elapsed < 30
    _wait_whole(chaos)


# ---- part 2: hang-ups free the engine and the router -----------------------------------------------------
class EnginePoller:
    """The tier's engine stats every 0.05 s in a thread, each sample (asked at, answered at, running): the
    handle stays warm, so an answer comes within tens of ms (a first call after a pause can take a second)."""

    def __init__(self, chaos: Chaos, deployment: str):
        self.chaos, self.deployment, self.samples, self.stop = chaos, deployment, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            a = time.perf_counter()
            running = self.chaos.ask("tier_stats", deployment=self.deployment)["running"]
            self.samples.append((a, time.perf_counter(), running))
            self.stop.wait(0.05)

    def __enter__(self) -> EnginePoller:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def freed_after(self, t: float) -> float:
        """Seconds from ``t`` until the answer of the first sample asked after ``t`` that saw nothing running."""
        return min((b for a, b, r in self.samples if a >= t and r == 0), default=math.inf) - t

    def busy_before(self, t: float) -> int:
        return max((r for a, b, r in self.samples if b <= t), default=0)

    def busy_between(self, t0: float, t1: float) -> int:
        """The most running seen by a sample asked at or after ``t0`` and answered by ``t1``."""
        return max((r for a, b, r in list(self.samples) if a >= t0 and b <= t1), default=0)


async def _grpc_hangups(address: str, tier: str, n: int) -> int:
    """``n`` long streams, cancelled together once one of them has sent text (so decoding is under way; an
    engine may decode some of them in turn); returns how many had sent text by then."""
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.CascadeStub(ch)
        calls = [stub.GenerateStream(_long_request(tier), metadata=AUTH, timeout=60) for _ in range(n)]
        started = asyncio.Event()
        got = 0

        async def first(call):
            nonlocal got
            m = await call.read()
            assert m is not grpc.aio.EOF and m.text and not m.finished, m
            got += 1
            started.set()

        readers = [asyncio.ensure_future(first(c)) for c in calls]
        await asyncio.wait_for(started.wait(), 30)
        await asyncio.sleep(0.3)
        t = time.perf_counter()
        for call in calls:
            call.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        return got, t


async def _http_hangups(url: str, tier: str, n: int) -> int:
    """``n`` long SSE streams; once one has sent text the client closes every connection mid-stream."""
    async with httpx.AsyncClient(timeout=60) as http:
        started = asyncio.Event()
        got = 0

        async def one():
            nonlocal got
            headers = {"authorization": f"Bearer {TOKEN}"}
            async with http.stream("POST", url + "/chat/completions", json=_sse_body(tier), headers=headers) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    assert "[DONE]" not in line and '"error"' not in line, line
                    if _has_text(line):
                        got += 1
                        started.set()
                        await asyncio.sleep(3600)  # reads no more; cancelled below, which closes the connection

        tasks = [asyncio.ensure_future(one()) for _ in range(n)]
        await asyncio.wait_for(started.wait(), 30)
        await asyncio.sleep(0.3)
        t = time.perf_counter()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return got, t


@pytest.mark.parametrize("front", ["grpc", "http"])
@pytest.mark.parametrize("tier", ["weak", "strong"])  # continuous, static
def test_hangups_mid_stream_free_the_engine_within_a_second(server, chaos, front, tier):
    _wait_whole(chaos)
    deployment = f"tier-{tier}"
    n = 8
    with EnginePoller(chaos, deployment) as poll:
        hangups = _grpc_hangups(server.address, tier, n) if front == "grpc" else _http_hangups(server.http_url, tier, n)
        got, t_cancel = asyncio.run(hangups)
        wait_for(lambda: poll.freed_after(t_cancel) < math.inf, timeout=10, interval=0.05, what="engine running 0")
    freed, busy = poll.freed_after(t_cancel), poll.busy_before(t_cancel)
    router = wait_for(
        lambda: (r := chaos.ask("router_stats"))["inflight"] == 0 and not any(r["tier_inflight"].values()) and r,
        timeout=5,
        interval=0.05,
        what="the router's counts back to zero",
    )
    stats = chaos.ask("tier_stats", deployment=deployment)
    print(
        f"{front} {tier}: {n} streams hung up ({got} had sent text, engine running {busy} before); engine running 0 "
        f"{freed:.3f} s after the hang-up; {stats}"
    )
    assert busy >= 1  # the engine was decoding them when the client went
    assert freed <= 1.0
    assert stats["running"] == 0 and stats["waiting"] == 0
    assert router["inflight"] == 0 and router["tier_inflight"] == {"weak": 0, "strong": 0}
    assert router["requests_by_code"].get("CANCELLED", 0) >= n


# ---- part 7: auth on both fronts, nothing secret in the logs ----------------------------------------------
def test_both_fronts_refuse_a_missing_or_wrong_token(server):
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.CascadeStub(ch)
        for md in ([], [("authorization", "Bearer wrong")], [("authorization", TOKEN)]):
            for call in (stub.Generate, lambda r, **kw: list(stub.GenerateStream(r, **kw))):
                with pytest.raises(grpc.RpcError) as e:
                    call(pb.GenerateRequest(prompt=PROMPT), metadata=md, timeout=30)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Serve's own gRPC services answer without a token (documented): health, the app list, reflection
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
        from ray.serve.generated import serve_pb2, serve_pb2_grpc

        api = serve_pb2_grpc.RayServeAPIServiceStub(ch)
        assert api.Healthz(serve_pb2.HealthzRequest(), timeout=10).message == "success"
        assert list(api.ListApplications(serve_pb2.ListApplicationsRequest(), timeout=10).application_names) == [
            "cascade"
        ]
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        [answer] = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(iter([ask]), timeout=10)
        services = {s.name for s in answer.list_services_response.service}
        assert "cascade.v1.Cascade" in services
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            for method, path, body in (
                ("POST", "/chat/completions", {"model": "cascade", "messages": [{"role": "user", "content": PROMPT}]}),
                ("POST", "/completions", {"model": "cascade", "prompt": PROMPT}),
                ("GET", "/models", None),
            ):
                r = http.request(method, path, json=body, headers=headers)
                assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", (path, r.text)
        # Serve's own routes: health and the route table, no token (documented in docs/operations.md), nothing else
        root = server.http_url.removesuffix("/v1")
        assert http.get(root + "/-/healthz").status_code == 200
        routes = http.get(root + "/-/routes")
        assert routes.status_code == 200 and routes.json() == {"/": "cascade"}


def test_no_token_or_prompt_text_in_the_logs_at_the_default_level(server, chaos):
    async def load():
        async with grpc.aio.insecure_channel(server.address) as ch, httpx.AsyncClient(timeout=60) as http:
            stub = pb_grpc.CascadeStub(ch)
            headers = {"authorization": f"Bearer {TOKEN}"}

            async def g(k):
                md = AUTH + [("request_id", f"log-check-{k}")]
                await stub.Generate(pb.GenerateRequest(prompt=f"{PROMPT} {k}", max_new_tokens=4), metadata=md)

            async def h(k):
                body = {"model": "cascade", "messages": [{"role": "user", "content": f"{PROMPT} {k}"}], "max_tokens": 4}
                r = await http.post(server.http_url + "/chat/completions", json=body, headers=headers)
                assert r.status_code == 200

            async def refused(k):  # refusals log their reason: never the prompt (or the token) that was refused
                for req, md in (
                    (pb.GenerateRequest(prompt=PROMPT * 600), AUTH),
                    (pb.GenerateRequest(prompt=PROMPT, max_new_tokens=9999), AUTH),
                    (pb.GenerateRequest(prompt=PROMPT), [("authorization", f"Bearer {TOKEN}x")]),
                ):
                    with pytest.raises(grpc.aio.AioRpcError):
                        await stub.Generate(req, metadata=md + [("request_id", f"log-check-refused-{k}")])

            jobs = [g(k) for k in range(20)] + [h(k) for k in range(20)] + [refused(k) for k in range(3)]
            await asyncio.gather(*jobs)

    _wait_whole(chaos)
    asyncio.run(load())
    logs = Path(chaos.ask("session_dir")) / "logs"
    texts = {
        p: p.read_text(errors="replace")
        for p in logs.rglob("*")
        if p.is_file() and p.suffix in (".log", ".out", ".err")
    }
    texts[server.log] = server.log.read_text()
    router_lines = sum(t.count("log-check-") for p, t in texts.items() if "Router" in p.name)
    print(f"{len(texts)} log files; {router_lines} router lines of this test's requests")
    assert router_lines >= 20  # the router did log these requests (under their ids)
    for p, t in texts.items():
        assert TOKEN not in t, p
        assert "Quartzzebra" not in t, p


def _has_text(line: str) -> bool:
    """An SSE line with a chunk whose delta carries text."""
    if not line.startswith("data: {"):
        return False
    return any(c.get("delta", {}).get("content") for c in json.loads(line[6:]).get("choices", []))
