"""``router.colocate_with``: a tier's engine inside the Router replica (called in-process by the walk, the other
tier through its handle), the first tier and the last. `cascade serve` with the shipped pair, real gRPC and HTTP
clients; the answers must be the ones the same engines give in-process, and the co-located tier has no deployment
of its own."""

from __future__ import annotations

import json
import urllib.request

import pytest

from serving.config import TOY_CONFIG, load_config, parse_config
from serving.core.types import GenerationRequest
from serving.deferral import make_rule, should_defer
from serving.engines import build_engine
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server
from serving.tasks.arithmetic import examples

pytestmark = pytest.mark.integration


def colocated(name: str):
    raw = load_config(TOY_CONFIG).model_dump(mode="json", exclude_none=True)
    raw["router"]["colocate_with"] = name
    for d in [t["serve"] for t in raw["tiers"]] + [raw["router"]]:  # one replica each: a 2-core box
        d.pop("autoscaling_config", None)
        d["num_replicas"] = 1
    return parse_config(raw)


CFG = colocated("weak")  # the engines and rule the expected answers come from (the same for both placements)


@pytest.fixture(scope="module", params=["weak", "strong"])
def server(request, tmp_path_factory):
    with cascade_server(colocated(request.param), tmp_path_factory.mktemp("colocated")) as s:
        s.colocated = request.param
        yield s


@pytest.fixture(scope="module")
def expected():
    """Prompts with the tier and text the cascade must answer, from the same engines run in-process."""
    score = make_rule(CFG.deferral.rule, CFG.deferral.alpha)
    weak, strong = (build_engine(t) for t in CFG.tiers)
    prompts = [e.prompt for e in examples(11, 24)]
    wg = weak.generate_many([GenerationRequest(prompt=p) for p in prompts])
    sg = strong.generate_many([GenerationRequest(prompt=p) for p in prompts])
    out = []
    for p, w, s in zip(prompts, wg, sg):
        deferred = should_defer(score(w.logprobs), CFG.deferral.threshold)
        out.append((p, "strong" if deferred else "weak", s.text if deferred else w.text))
    assert {t for _, t, _ in out} == {"weak", "strong"}, "the prompts must exercise both tiers"
    return out


def test_no_deployment_of_its_own_and_answers_match_in_process(server, expected):
    deployed = server.log.read_text()
    inside, other = server.colocated, ({"weak", "strong"} - {server.colocated}).pop()
    assert f"Deployment(name='tier-{other}'" in deployed and "Deployment(name='Router'" in deployed
    assert f"Deployment(name='tier-{inside}'" not in deployed  # that engine runs inside the Router
    with CascadeClient(server.address, timeout=120) as c:
        for prompt, tier, text in expected:
            r = c.generate(make_request(prompt))
            assert (r.tier, r.text) == (tier, text), prompt
            assert r.deferred == (tier == "strong")
        forced = c.generate(make_request(expected[0][0], force_tier="weak"))
        assert forced.tier == "weak"
        streamed = list(c.stream(make_request(expected[0][0])))
        assert "".join(m.text for m in streamed) == expected[0][2] and streamed[-1].finished


def test_openai_front_same_answers(server, expected):
    for prompt, tier, text in expected[:8]:
        body = json.dumps({"model": "cascade", "messages": [{"role": "user", "content": prompt}]}).encode()
        req = urllib.request.Request(server.http_url + "/chat/completions", body, {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            got = json.loads(r.read())
        assert got["choices"][0]["message"]["content"] == text
        assert got["cascade"]["tier"] == tier
