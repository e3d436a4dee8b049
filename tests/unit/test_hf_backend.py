"""The transformers backend on real (tiny, random) Llama models: no mocks."""


import pytest
import torch

from serving.config import Generation as GenerationDefaults
from serving.config import ModelSource
from serving.models import Generation, GenerationRequest, HFBackend
from serving.models.hf import resolve_source

PROMPTS = ["What is 1 + 2?", "What is 48213 + 377?", "Hi", "What is 99999 + 99999? Tell me."]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return HFBackend(ModelSource(source=str(tiny_model_dir)), GenerationDefaults(max_new_tokens=12))


def test_logprobs_are_the_chosen_tokens_log_softmax(backend):
    req = GenerationRequest(prompt=PROMPTS[1], max_new_tokens=6)
    gen = backend.generate([req])[0]
    ids = backend.encode(req)
    assert len(gen.token_ids) == len(gen.logprobs) and 1 <= len(gen.token_ids) <= 6
    assert gen.prompt_tokens == len(ids)
    # Recompute each chosen token's log-prob with a plain forward pass over prompt + answer.
    full = torch.tensor([ids + gen.token_ids])
    with torch.no_grad():
        logits = backend.model(full).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    for k, (tok, got) in enumerate(zip(gen.token_ids, gen.logprobs)):
        want = lp[len(ids) + k - 1, tok].item()
        assert got == pytest.approx(want, abs=1e-4)
        assert tok == int(lp[len(ids) + k - 1].argmax())  # greedy
    assert all(x <= 0 for x in gen.logprobs)


def test_same_prompt_same_tokens_alone_or_in_a_batch(backend):
    reqs = [GenerationRequest(prompt=p) for p in PROMPTS]
    batched = backend.generate(reqs)
    for req, b in zip(reqs, batched):
        alone = backend.generate([req])[0]
        assert alone.token_ids == b.token_ids
        assert alone.text == b.text
        assert alone.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_per_request_max_new_tokens_in_one_batch(backend):
    gens = backend.generate([GenerationRequest(prompt="What is 5 + 5?", max_new_tokens=n) for n in (1, 3, 12)])
    assert [len(g.token_ids) <= n for g, n in zip(gens, (1, 3, 12))] == [True] * 3
    assert gens[1].token_ids == gens[2].token_ids[: len(gens[1].token_ids)]
    long = backend.generate([GenerationRequest(prompt="What is 5 + 5?", max_new_tokens=12)])[0]
    if long.finish_reason == "length":
        assert len(long.token_ids) == 12


def test_chat_template_is_applied_when_present(backend, tmp_path):
    assert backend.use_chat
    assert backend.render(GenerationRequest(prompt="What is 1 + 2?")) == "<s>What is 1 + 2?\n"
    msgs = [{"role": "user", "content": "What is 3 + 4?"}]
    assert backend.render(GenerationRequest(messages=msgs)) == "<s>What is 3 + 4?\n"
    raw = HFBackend(ModelSource(source=backend.source.source, chat_template="never"))
    assert not raw.use_chat and raw.render(GenerationRequest(prompt="abc")) == "abc"


def test_stream_yields_deltas_that_add_up_to_the_answer(backend):
    req = GenerationRequest(prompt=PROMPTS[0], max_new_tokens=10)
    items = list(backend.stream(req))
    final = items[-1]
    assert isinstance(final, Generation)
    assert "".join(x for x in items[:-1]) == final.text
    assert final.token_ids == backend.generate([req])[0].token_ids


def test_gguf_paths_split_into_directory_and_file():
    assert resolve_source(ModelSource(source="/m/x.Q4.gguf")) == ("/m", "x.Q4.gguf")
    assert resolve_source(ModelSource(source="org/repo", gguf_file="f.gguf")) == ("org/repo", "f.gguf")
    assert resolve_source(ModelSource(source="org/repo")) == ("org/repo", None)


def test_embedding_is_mean_final_hidden_state_over_the_answer(backend):
    reqs = [GenerationRequest(prompt=p, embed=True, max_new_tokens=5) for p in PROMPTS[:2]]
    gens = backend.generate(reqs)
    for req, g in zip(reqs, gens):
        ids = backend.encode(req)
        with torch.no_grad():
            h = backend.model(torch.tensor([ids + g.token_ids]), output_hidden_states=True).hidden_states[-1][0]
        want = h[len(ids) : len(ids) + len(g.token_ids)].mean(0)
        assert len(g.embedding) == backend.model.config.hidden_size
        assert torch.allclose(torch.tensor(g.embedding), want, atol=1e-4)
    assert backend.generate([GenerationRequest(prompt=PROMPTS[0])])[0].embedding is None
