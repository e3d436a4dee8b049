"""Three tiers served end to end (serving/three_tier_config.yaml: weak -> medium -> strong, the shipped
models, a rule per boundary), called over real gRPC: an easy question stays with weak, a medium one
is answered by medium, a hard one by strong, each boundary deciding early where it can."""

from __future__ import annotations

import pytest

from serving.config import PACKAGE_DIR, load_config
from serving.core.types import GenerationRequest
from serving.deferral import should_defer
from serving.engines import build_engine
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server
from serving.tasks.arithmetic import examples

pytestmark = pytest.mark.integration
CFG = load_config(PACKAGE_DIR / "three_tier_config.yaml")


@pytest.fixture(scope="module")
def cases():
    """One question per tier, found by running the three tiers in-process through the server's engines
    and the boundaries' own rules: the first tier whose rule accepts is the one that must answer."""
    exs = list(examples(3, 300))
    gens = {}
    for tier in CFG.tiers:
        engine = build_engine(tier)
        gens[tier.name] = engine.generate_many([GenerationRequest(prompt=e.prompt) for e in exs])
        engine.close()

    def answered_by(i: int) -> str:
        for k, tier in enumerate(CFG.tiers[:-1]):
            b = CFG.boundary(k)
            from serving.deferral import build_scorer

            if not should_defer(build_scorer(b.rule, b.alpha)(gens[tier.name][i].logprobs), b.threshold):
                return tier.name
        return CFG.tiers[-1].name

    out = {}
    for i, e in enumerate(exs):
        name = answered_by(i)
        if name not in out and gens[name][i].text == e.reference:
            out[name] = e
    assert set(out) == {"weak", "medium", "strong"}, f"no question for some tier: {sorted(out)}"
    return out


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with cascade_server(CFG, tmp_path_factory.mktemp("three")) as server:
        with CascadeClient(server.address, timeout=120) as c:
            yield c


@pytest.mark.parametrize("tier", ["weak", "medium", "strong"])
def test_each_question_is_answered_by_its_tier(client, cases, tier):
    e = cases[tier]
    r = client.generate(make_request(e.prompt))
    assert (r.text, r.tier, r.deferred) == (e.reference, tier, tier != "weak")
    ran = [t.tier for t in r.tiers]
    assert ran == ["weak", "medium", "strong"][: ran.index(tier) + 1]
    for t in r.tiers[:-1]:  # every tier before the answering one was deferred by its boundary's rule
        assert t.finish_reason in ("deferred", "stop", "length") and t.HasField("score")
    msgs = list(client.stream(make_request(e.prompt)))
    assert "".join(m.text for m in msgs[:-1]) == e.reference and {m.tier for m in msgs[:-1]} == {tier}
