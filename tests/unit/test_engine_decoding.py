"""Per-request decoding controls (serving.core.decoding.Decoding) in every engine (continuous, static, vllm
where vLLM is installed), on the tiny random Llama with head_dim 32: seeds, raw log-probs under sampling,
stop tokens, ignore_eos, min_tokens, logit bias, penalties, top log-probs, prompt log-probs, cancellation."""

import asyncio
import math
import time
from dataclasses import fields

import pytest
import torch

from serving.config import ModelSource
from serving.core.decoding import Decoding
from serving.core.types import GenerationRequest
from serving.engines import ENGINES, build_engine
from serving.engines.hf import HFModel
from tests.conftest import need_vllm
from tests.unit.test_models import PROMPTS, collect, tier


@pytest.fixture(scope="module")
def built(tiny_model_dir_hd32):
    engines = {}

    def get(name):
        if name == "vllm":
            need_vllm()
        if name not in engines:
            engines[name] = build_engine(tier(tiny_model_dir_hd32, name, max_new_tokens=12))
        return engines[name]

    yield get
    for e in engines.values():
        e.close()


@pytest.fixture(scope="module", params=sorted(ENGINES))
def engine(request, built):
    return built(request.param)


@pytest.fixture(scope="module")
def ref(tiny_model_dir_hd32) -> HFModel:
    return HFModel(ModelSource(source=str(tiny_model_dir_hd32)))


def req(prompt=PROMPTS[1], max_new_tokens=8, **decoding) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, max_new_tokens=max_new_tokens, decoding=Decoding(**decoding).check())


def raw_logprobs(ref: HFModel, engine, r: GenerationRequest, answer: list[int]) -> torch.Tensor:
    """log-softmax of the raw logits at every answer position (a plain forward over prompt + answer)."""
    ids = engine.codec.encode(r)
    with torch.no_grad():
        logits = ref.model(torch.tensor([ids + answer])).logits[0, len(ids) - 1 :].float()
    return torch.log_softmax(logits, -1)


def test_every_engine_honours_every_field_but_stop(engine):
    assert engine.decoding_support == frozenset(f.name for f in fields(Decoding)) - {"stop"}


def test_seeded_sampling_is_reproducible_alone_or_in_a_batch(engine):
    seeded = req(temperature=1.0, seed=1234, ignore_eos=True)
    a = engine.generate_many([seeded])[0]
    neighbours = [req(p) for p in PROMPTS] + [req(PROMPTS[0], temperature=1.0, seed=99)]
    mixed = engine.generate_many([*neighbours[:2], seeded, *neighbours[2:]])  # beside greedy and sampled ones
    b = mixed[2]
    assert len(a.token_ids) == 8 and a.token_ids == b.token_ids
    for n, g in zip(neighbours[:4], mixed[:2] + mixed[3:5]):  # the greedy ones (batched) are unaffected too
        assert g.token_ids == engine.generate_many([n])[0].token_ids
    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    others = [engine.generate_many([req(temperature=1.0, seed=s, ignore_eos=True)])[0].token_ids for s in (1, 2, 3)]
    assert any(o != a.token_ids for o in others)  # another seed, another draw (a random model: very likely)


def test_sampled_logprobs_are_the_raw_distributions(engine, ref):
    """Under temperature, top-k and top-p the reported log-prob is still the unmodified model's."""
    r = req(temperature=1.7, top_k=20, top_p=0.9, seed=5, ignore_eos=True)
    g = engine.generate_many([r])[0]
    lp = raw_logprobs(ref, engine, r, g.token_ids)
    for k, (tok, got) in enumerate(zip(g.token_ids, g.logprobs)):
        assert got == pytest.approx(lp[k, tok].item(), abs=1e-4)


def test_stop_token_ids_end_the_answer_at_that_token(engine):
    greedy = engine.generate_many([req(max_new_tokens=10, ignore_eos=True)])[0].token_ids
    stop_at = greedy[2]
    g = engine.generate_many([req(max_new_tokens=10, stop_token_ids=[stop_at])])[0]
    first = greedy.index(stop_at)
    assert g.token_ids == greedy[: first + 1] and g.finish_reason == "stop"


def test_ignore_eos_runs_to_max_new_tokens(engine):
    eos = engine.eos_ids[0]
    forced = engine.generate_many([req(max_new_tokens=6, logit_bias={eos: 100.0})])[0]
    assert forced.token_ids == [eos] and forced.finish_reason == "stop"
    on = engine.generate_many([req(max_new_tokens=6, logit_bias={eos: 100.0}, ignore_eos=True)])[0]
    assert on.token_ids == [eos] * 6 and on.finish_reason == "length"
    plain = engine.generate_many([req(max_new_tokens=7, ignore_eos=True)])[0]  # greedy: the batched path
    assert len(plain.token_ids) == 7 and plain.finish_reason == "length"


def test_min_tokens_hold_back_the_end(engine):
    eos = engine.eos_ids[0]
    g = engine.generate_many([req(max_new_tokens=8, logit_bias={eos: 100.0}, min_tokens=3)])[0]
    assert len(g.token_ids) == 4 and g.token_ids[-1] == eos and eos not in g.token_ids[:3]
    assert g.finish_reason == "stop"


def test_logit_bias_forces_a_token(engine, ref):
    tok = engine.encode_text("7")[0]
    r = req(max_new_tokens=5, logit_bias={tok: 100.0})
    g = engine.generate_many([r])[0]
    assert g.token_ids == [tok] * 5
    lp = raw_logprobs(ref, engine, r, g.token_ids)  # the raw log-prob of the forced token, not ~0
    assert g.logprobs == pytest.approx([lp[k, tok].item() for k in range(5)], abs=1e-4)


def test_out_of_vocabulary_logit_bias_is_refused(engine):
    from serving.core.errors import BadRequest

    with pytest.raises(BadRequest, match="logit_bias"):
        engine.generate_many([req(logit_bias={10**6: 1.0})])


@pytest.mark.parametrize(
    "controls",
    [
        dict(frequency_penalty=2.0),
        dict(presence_penalty=2.0),
        dict(repetition_penalty=1.8),
        dict(logit_bias={5: 3.0, 9: -2.0}, min_tokens=4),
    ],
)
def test_greedy_controls_change_the_answer_alike_on_every_engine(built, controls):
    """A penalty changes the answer of the (repetitive) random model; every engine applies it the same way."""
    names = [n for n in sorted(ENGINES) if n != "vllm"]
    try:
        need_vllm()
        names.append("vllm")
    except pytest.skip.Exception:
        pass
    plain = built("continuous").generate_many([req(PROMPTS[2], max_new_tokens=40, ignore_eos=True)])[0]
    assert len(set(plain.token_ids)) < len(plain.token_ids)  # it repeats itself: something to penalise
    r = req(PROMPTS[2], max_new_tokens=40, ignore_eos=True, **controls)
    got = {n: built(n).generate_many([r])[0] for n in names}
    ref_ids = got["continuous"].token_ids
    if "penalty" in next(iter(controls)):
        assert ref_ids != plain.token_ids
    for n, g in got.items():
        assert g.token_ids == ref_ids, n
        assert g.logprobs == pytest.approx(got["continuous"].logprobs, abs=1e-4), n


def test_top_logprobs_are_the_most_likely_first(engine, ref):
    r = req(max_new_tokens=6, top_logprobs=3, ignore_eos=True)
    chunks = collect(engine, r)
    g = chunks[-1].final
    assert g.top_logprobs is not None and len(g.top_logprobs) == len(g.token_ids) == 6
    assert sum((c.top_logprobs for c in chunks), []) == g.top_logprobs  # streamed with the tokens
    lp = raw_logprobs(ref, engine, r, g.token_ids)
    for k, (tok, chosen, top) in enumerate(zip(g.token_ids, g.logprobs, g.top_logprobs)):
        assert len(top) == 3 and [t for t, _ in top] == lp[k].topk(3).indices.tolist()
        assert [x for _, x in top] == pytest.approx(lp[k].topk(3).values.tolist(), abs=1e-4)
        assert top[0][0] == tok and top[0][1] == pytest.approx(chosen, abs=1e-5)  # greedy: the chosen one leads
    plain = engine.generate_many([req(max_new_tokens=6, ignore_eos=True)])[0]
    assert plain.top_logprobs is None and plain.token_ids == g.token_ids


def test_top_logprobs_under_sampling_hold_the_raw_alternatives(engine, ref):
    r = req(max_new_tokens=5, top_logprobs=2, temperature=1.0, seed=11, ignore_eos=True)
    g = engine.generate_many([r])[0]
    lp = raw_logprobs(ref, engine, r, g.token_ids)
    for k, top in enumerate(g.top_logprobs):
        assert [t for t, _ in top] == lp[k].topk(2).indices.tolist()


def test_prompt_logprobs_equal_a_plain_forward(engine, ref):
    r = GenerationRequest(prompt=PROMPTS[3])
    ids, lps, tops = engine.run(engine.prompt_logprobs(r, top_k=2))
    assert ids == engine.codec.encode(r) and len(lps) == len(ids) == len(tops)
    with torch.no_grad():
        lp = torch.log_softmax(ref.model(torch.tensor([ids])).logits[0].float(), -1)
    assert math.isnan(lps[0]) and tops[0] == []
    assert lps[1:] == pytest.approx([lp[i - 1, ids[i]].item() for i in range(1, len(ids))], abs=1e-4)
    for i in range(1, len(ids)):
        assert [t for t, _ in tops[i]] == lp[i - 1].topk(2).indices.tolist()
    _, lps0, tops0 = engine.run(engine.prompt_logprobs(r))
    assert lps0[1:] == pytest.approx(lps[1:], abs=1e-6) and all(t == [] for t in tops0)


def test_closing_a_sampled_stream_frees_its_slot(engine):
    r = req(PROMPTS[3], max_new_tokens=60, temperature=1.0, seed=3, ignore_eos=True)

    async def run():
        keep = asyncio.ensure_future(engine.generate(req(PROMPTS[2], max_new_tokens=20, temperature=0.8, seed=1)))
        stream = engine.stream(r)
        got = [await stream.__anext__(), await stream.__anext__()]
        await stream.aclose()
        full = await keep
        await asyncio.sleep(0.3)  # the dropped request's last step
        return got, full

    cancelled = getattr(getattr(engine, "solo", None), "cancelled", 0)
    got, full = engine.run(run())
    assert sum(len(c.token_ids) for c in got) < 60 and full.completion_tokens >= 1
    assert engine.stats().running == 0
    if engine.name == "vllm":
        assert engine.llm.output_processor.get_num_unfinished_requests() == 0
    else:  # the dropped request's loop ended early, at its next step
        for _ in range(50):
            if engine.solo.decoding == 0:
                break
            time.sleep(0.1)
        assert engine.solo.decoding == 0 and engine.solo.cancelled == cancelled + 1
    # the engine still serves, and the same seed still gives the same answer
    a, b = engine.generate_many([req(max_new_tokens=5, temperature=1.0, seed=8)] * 2)
    assert a.token_ids == b.token_ids


def test_presence_and_frequency_penalty_math():
    from serving.engines.hf_generate import PresenceFrequencyPenalty

    scores = torch.zeros(1, 6)
    seq = torch.tensor([[4, 4, 1, 2, 2, 2, 5]])  # the answer starts at 2: tokens 1, 2, 2, 2, 5
    out = PresenceFrequencyPenalty(0.5, 0.25, start=2)(seq, scores)
    assert out[0].tolist() == pytest.approx([0, -0.75, -1.25, 0, 0, -0.75])
    assert PresenceFrequencyPenalty(1.0, 1.0, start=7)(seq, scores).tolist() == scores.tolist()


def test_continuous_keeps_greedy_requests_in_the_batch(built):
    e = built("continuous")
    assert e.in_batch(req()) and e.in_batch(req(stop_token_ids=[3], ignore_eos=True, top_logprobs=0))
    assert e.in_batch(req(seed=1, top_p=0.5, top_k=3))  # moot under greedy decoding
    for other in (dict(temperature=0.5), dict(top_logprobs=1), dict(min_tokens=2), dict(repetition_penalty=1.1)):
        assert not e.in_batch(req(**other)), other


def test_decoding_on_from_a_prefix_with_top_logprobs(engine, ref):
    full = engine.generate_many([req(max_new_tokens=8, ignore_eos=True)])[0]
    on = GenerationRequest(
        prompt=PROMPTS[1],
        max_new_tokens=8,
        prefix_ids=full.token_ids[:3],
        prefix_logprobs=full.logprobs[:3],
        decoding=Decoding(top_logprobs=2, ignore_eos=True),
    )
    g = engine.generate_many([on])[0]
    assert g.token_ids == full.token_ids and g.logprobs == pytest.approx(full.logprobs, abs=1e-4)
    lp = raw_logprobs(ref, engine, on, g.token_ids)
    assert len(g.top_logprobs) == 8
    for k, top in enumerate(g.top_logprobs):  # the prefix's alternatives too
        assert [t for t, _ in top] == lp[k].topk(2).indices.tolist(), k


def test_a_sampling_tier_reports_raw_logprobs_on_the_transformers_engines(tiny_model_dir_hd32, ref):
    """generation.do_sample: requests without controls sample at the tier's temperature, never in the
    continuous batch (which reports log-probs after temperature); a seed makes them reproducible."""
    from serving.config import Tier

    for name in ("continuous", "static"):
        t = Tier.model_validate(
            {
                "name": "t",
                "model": {"source": str(tiny_model_dir_hd32)},
                "generation": {"max_new_tokens": 6, "do_sample": True, "temperature": 1.6},
                "engine": name,
            }
        )
        e = build_engine(t)
        try:
            r = GenerationRequest(prompt=PROMPTS[0], decoding=Decoding(seed=4, ignore_eos=True))
            a, b = e.generate_many([r, r])
            assert a.token_ids == b.token_ids and len(a.token_ids) == 6
            lp = raw_logprobs(ref, e, r, a.token_ids)
            assert a.logprobs == pytest.approx([lp[k, t].item() for k, t in enumerate(a.token_ids)], abs=1e-4)
            plain = e.generate_many([GenerationRequest(prompt=PROMPTS[0])])[0]
            lp = raw_logprobs(ref, e, r, plain.token_ids)
            assert plain.logprobs == pytest.approx([lp[k, t].item() for k, t in enumerate(plain.token_ids)], abs=1e-4)
        finally:
            e.close()
