"""The router applies a calibrated post-hoc artifact per request, over gRPC, and its budget
controller holds the realised deferral share near the target."""

from __future__ import annotations

import numpy as np
import pytest

from serving.config import TOY_CONFIG, load_config, parse_config
from serving.core.types import GenerationRequest
from serving.deferral import build_scorer
from serving.engines import build_engine
from serving.evaluation.calibrate import calibrate
from serving.evaluation.data import write_arithmetic_splits
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server
from serving.tasks.arithmetic import examples

pytestmark = pytest.mark.integration
TARGET = 0.4


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    splits = write_arithmetic_splits(d, {"train": 400, "calibration": 400})
    return calibrate(
        load_config(TOY_CONFIG),
        str(splits["calibration"]),
        target_deferral=TARGET,
        rule="post_hoc_embed",
        train_data=str(splits["train"]),
        cache=tmp_path_factory.mktemp("cache"),
    )


@pytest.fixture(scope="module")
def served(artifact, tmp_path_factory):
    raw = load_config(TOY_CONFIG).model_dump(mode="json")
    raw["deferral"] = {
        "artifact": artifact,
        "target_deferral": TARGET,
        "controller_window": 40,
        "controller_warmup": 20,
    }
    cfg = parse_config(raw)
    with cascade_server(cfg, tmp_path_factory.mktemp("serve")) as server:
        with CascadeClient(server.address, timeout=120) as c:
            yield c, cfg


def test_router_scores_with_the_post_hoc_model_and_controller(served, artifact):
    client, cfg = served
    weak = build_engine(cfg.tiers[0])
    scorer = build_scorer("post_hoc_embed", model=artifact["model"])
    prompts = [e.prompt for e in examples(77, 100)]
    deferred = []
    for i, p in enumerate(prompts):
        r = client.generate(make_request(p))
        assert r.rule == "post_hoc_embed"
        assert r.deferred == (r.score < r.threshold)
        if i < 20:  # before the controller warms up: the artifact's calibrated threshold
            assert r.threshold == pytest.approx(artifact["threshold"])
        if i % 25 == 0:  # the served score is the artifact's model applied to the weak answer
            g = weak.generate_many([GenerationRequest(prompt=p, embed=True)])[0]
            assert r.score == pytest.approx(scorer(g.logprobs, g.embedding), abs=1e-3)
        deferred.append(r.deferred)
    assert abs(np.mean(deferred[20:]) - TARGET) <= 0.12
    # a per-request threshold still overrides the controller
    r = client.generate(make_request(prompts[0], threshold=-1e9))
    assert (r.tier, r.threshold) == ("weak", -1e9)
