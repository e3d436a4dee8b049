"""Cascade economics end to end: cost receipts and load-aware deferral through `cascade serve` (real Ray
Serve, the shipped pair) over real gRPC and the OpenAI HTTP front; the Prometheus counters and
`cascade status` totals against the receipts."""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
import urllib.request

import grpc
import openai
import pytest

from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc
from serving.config import TOY_CONFIG, Cost, LoadAware, load_config
from serving.core.receipt import price
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server, wait_for
from serving.tasks.arithmetic import examples

pytestmark = pytest.mark.integration
CFG = load_config(TOY_CONFIG)
CFG.tiers[0].cost = Cost(per_prompt_token=0.001, per_completion_token=0.002, per_request=0.01)
CFG.tiers[1].cost = Cost(per_prompt_token=0.008, per_completion_token=0.016, per_request=0.05)
FLOOR = -50.0
# Shedding starts as soon as the strong tier has one call of this router in flight and stops when it has
# none: sequential requests never shed, concurrent hard ones do (the in-flight count is the real one).
CFG.deferral.load_aware = LoadAware(high_watermark=1, low_watermark=0, floor=FLOOR, ramp_s=0)
for opts in [CFG.router] + [t.serve for t in CFG.tiers]:
    opts.autoscaling_config, opts.num_replicas = None, 1
EASY, HARD = "What is 2 + 3?", "What is 48213 + 99377?"
HARD_MIX = [e.prompt for e in examples(3, 64, min_digits=4)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with cascade_server(CFG, tmp_path_factory.mktemp("econ")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with CascadeClient(server.address, timeout=120) as c:
        yield c


def check_receipt(r) -> None:
    """Lines priced with their tier's cost, the total their sum, the answering call last and kept."""
    rc = r.receipt
    assert rc.lines and rc.strong_tier == "strong"
    for line in rc.lines:
        assert line.cost == pytest.approx(price(CFG.tier(line.tier).cost, line.prompt_tokens, line.completion_tokens))
    assert rc.total == pytest.approx(sum(line.cost for line in rc.lines))
    assert [line.discarded for line in rc.lines] == [True] * (len(rc.lines) - 1) + [False]
    assert rc.lines[-1].tier == r.tier
    assert rc.strong_only == pytest.approx(
        price(CFG.tier("strong").cost, rc.strong_only_prompt_tokens, rc.strong_only_completion_tokens)
    )
    if r.tier == "strong":  # the strong tier ran: its real tokens
        assert not rc.strong_only_estimated and rc.strong_only == pytest.approx(rc.lines[-1].cost)
    else:  # estimated from the answer given
        assert rc.strong_only_estimated
        assert (rc.strong_only_prompt_tokens, rc.strong_only_completion_tokens) == (
            rc.lines[-1].prompt_tokens,
            rc.lines[-1].completion_tokens,
        )


def test_receipts_of_weak_and_deferred_answers_unary_and_streamed(client):
    easy = client.generate(make_request(EASY))
    assert (easy.tier, easy.text, easy.load_shed) == ("weak", "5", False)
    check_receipt(easy)
    assert [x.tier for x in easy.receipt.lines] == ["weak"] and easy.receipt.strong_only > easy.receipt.total
    hard = client.generate(make_request(HARD))
    assert (hard.tier, hard.deferred, hard.load_shed) == ("strong", True, False)  # nothing else in flight
    check_receipt(hard)
    weak, strong = hard.receipt.lines
    # the discarded weak attempt is on the bill with the tokens it had produced when the rule stopped it
    assert (weak.tier, weak.discarded, weak.completion_tokens) == ("weak", True, hard.tiers[0].completion_tokens)
    assert (strong.tier, strong.completion_tokens) == ("strong", hard.tiers[1].completion_tokens)
    assert hard.receipt.total > hard.receipt.strong_only  # a deferral costs more than strong alone
    streamed = list(client.stream(make_request(EASY)))
    assert all(not m.HasField("receipt") for m in streamed[:-1])  # the receipt comes with the last message
    assert streamed[-1].finished and streamed[-1].receipt == easy.receipt
    last = list(client.stream(make_request(HARD)))[-1]
    check_receipt(last)
    assert [x.tier for x in last.receipt.lines] == ["weak", "strong"]


def test_http_front_carries_the_receipt(server):
    api = openai.OpenAI(base_url=server.http_url, api_key="unused", max_retries=0, timeout=60)
    wait_for(lambda: _http_ready(server), timeout=60, what="the HTTP routes")
    r = api.chat.completions.create(model="cascade", messages=[{"role": "user", "content": HARD}])
    c = r.model_extra["cascade"]
    assert (c["tier"], c["deferred"], c["load_shed"]) == ("strong", True, False)
    rc = c["receipt"]
    assert [(x["tier"], x["discarded"]) for x in rc["lines"]] == [("weak", True), ("strong", False)]
    assert rc["total"] == pytest.approx(sum(x["cost"] for x in rc["lines"]))
    assert rc["strong_only_estimated"] is False and rc["strong_only"] == pytest.approx(rc["lines"][1]["cost"])
    # the lines' token counts are every tier's work (cascade.usage); OpenAI's usage is the answer's
    assert sum(x["prompt_tokens"] for x in rc["lines"]) == c["usage"]["prompt_tokens"]
    assert r.usage.completion_tokens == rc["lines"][-1]["completion_tokens"]
    r = api.completions.create(model="cascade", prompt=EASY)
    assert r.model_extra["cascade"]["receipt"]["strong_only_estimated"] is True


def _http_ready(server) -> bool:
    try:
        return urllib.request.urlopen(server.http_url + "/models", timeout=5).status == 200
    except Exception:
        return False


async def _burst(address: str, prompts: list[str], callers: int) -> list:
    """``callers`` concurrent callers working through ``prompts`` (each once)."""
    queue = list(prompts)
    out = []
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.CascadeStub(ch)

        async def caller():
            while queue:
                out.append(await stub.Generate(make_request(queue.pop()), timeout=120))

        await asyncio.gather(*(caller() for _ in range(callers)))
    return out


def test_saturated_strong_tier_sheds_deferrals(client, server):
    results = asyncio.run(_burst(server.address, HARD_MIX, callers=8))
    shed = [r for r in results if r.load_shed]
    deferred = [r for r in results if r.deferred]
    print(f"{len(results)} hard questions, 8 callers: {len(deferred)} deferred, {len(shed)} kept for load")
    assert shed and deferred  # the first ones defer; while strong is busy, unsure weak answers are kept
    threshold = CFG.deferral.threshold
    for r in shed:  # kept only because of load: below the configured threshold, at or above the floor
        assert (r.tier, r.deferred, r.threshold) == ("weak", False, FLOOR)
        assert FLOOR <= r.score < threshold
        check_receipt(r)
    for r in results:
        if not r.load_shed and r.tier == "weak":
            assert r.score >= threshold  # kept on its own merit
    # with the strong tier idle again, the configured threshold is back: the hard question defers
    r = client.generate(make_request(HARD))
    assert (r.tier, r.load_shed, r.threshold) == ("strong", False, threshold)


def _scrape(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        m = re.match(r"(ray_cascade_(?:cost|cost_strong_only|load_shed)_total)\{(.*)\} (\S+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def _status(server) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "serving.ops.cli", "status", "--ray-address", server.ray_address, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["router"]["costs"]


def test_receipts_add_up_to_the_prometheus_counters_and_status_totals(client, server):
    close = lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)

    def settled():  # the exporter has caught up with every receipt so far (one router replica)
        s, prom = _status(server), _scrape(server.metrics_url)
        return close(prom.get("ray_cascade_cost_total", 0.0), s["total"]) and (s, prom)

    s0, p0 = wait_for(settled, timeout=90, interval=2, what="the cost counters to match the router's totals")
    results = [client.generate(make_request(p)) for p in (EASY, HARD, EASY)]
    results += asyncio.run(_burst(server.address, HARD_MIX[:32], callers=8))
    total = sum(r.receipt.total for r in results)
    strong_only = sum(r.receipt.strong_only for r in results)
    shed = sum(r.load_shed for r in results)
    want = {
        "ray_cascade_cost_total": total,
        "ray_cascade_cost_strong_only_total": strong_only,
        "ray_cascade_load_shed_total": shed,
    }

    def moved():
        p = _scrape(server.metrics_url)
        return {k: p.get(k, 0.0) - p0.get(k, 0.0) for k in want}

    got = {}
    try:
        wait_for(
            lambda: (got.update(moved()) or True) and all(close(got[k], v) for k, v in want.items()),
            timeout=90,
            interval=2,
            what="the counters to add up to the receipts",
        )
    except TimeoutError:
        pytest.fail(f"counters moved by {got}, the receipts add up to {want}")
    s1 = _status(server)
    assert s1["requests"] - s0["requests"] == len(results)
    assert close(s1["total"] - s0["total"], total) and close(s1["strong_only"] - s0["strong_only"], strong_only)
    print(
        f"{len(results)} requests: cost {total:.4f}, strong-only {strong_only:.4f} "
        f"({strong_only / total:.2f}x), {shed} kept for load"
    )
