"""What every engine derives from a request's decoding controls (``serving.core.decoding.Decoding``) before
it decodes: the sampling in force, the tokens that end the answer, and which requests need more than the
engine's batched default path. No torch here (the vLLM engine uses it too)."""

from __future__ import annotations

from dataclasses import fields
from typing import Optional

from serving.core.decoding import Decoding
from serving.core.errors import BadRequest

# Every Decoding field but ``stop`` (stop strings are the tier's, for every engine): what each engine
# here honours per request.
ENGINE_FIELDS = frozenset(f.name for f in fields(Decoding)) - {"stop"}
# The controls transformers' continuous batching takes per request (its per-request end-of-sequence ids).
EOS_FIELDS = frozenset({"stop_token_ids", "ignore_eos"})
# The fields that only shape a draw: moot under greedy decoding.
SAMPLING_FIELDS = frozenset({"temperature", "top_p", "top_k", "min_p", "seed"})


def asked(d: Decoding) -> set[str]:
    """The fields an engine must act on: those set away from their defaults, less ``stop`` (the tier's)
    and ``top_logprobs=0`` (the chosen token's log-prob is always reported)."""
    out = set(d.requested()) - {"stop"}
    if not d.top_logprobs:
        out.discard("top_logprobs")
    return out


def sampling(d: Decoding, defaults) -> tuple[float, float]:
    """(temperature, top_p) in force: the request's temperature when it samples (> 0), else the tier's
    default sampling (``generation.do_sample``) when it has one, else greedy (0). ``top_p`` is the
    request's when set below 1, else the tier's when the tier samples."""
    tier_samples = bool(getattr(defaults, "do_sample", False))
    temperature = d.temperature if d.temperature > 0 else (defaults.temperature if tier_samples else 0.0)
    top_p = d.top_p if d.top_p < 1 else (defaults.top_p if tier_samples else 1.0)
    return float(temperature), float(top_p)


def needs(d: Decoding, defaults) -> set[str]:
    """What the request asks of an engine beyond the tier's own decoding: :func:`asked`, less the
    sampling-only fields when the decoding in force is greedy (a seed or top-p changes nothing there)."""
    out = asked(d)
    if sampling(d, defaults)[0] == 0:
        out -= SAMPLING_FIELDS
    return out


def stop_ids(d: Decoding, eos_ids: list[int]) -> list[int]:
    """The tokens that end the answer (included in it): the model's end-of-sequence ids unless
    ``ignore_eos``, and the request's ``stop_token_ids``."""
    return sorted(set(() if d.ignore_eos else eos_ids) | set(d.stop_token_ids))


def check_vocab(d: Decoding, vocab_size: Optional[int]) -> None:
    """Refuses logit-bias entries for token ids outside the model's vocabulary (BadRequest)."""
    if vocab_size is None:
        return
    bad = sorted(t for t in d.logit_bias if t >= vocab_size)
    if bad:
        raise BadRequest(f"has token ids outside this model's vocabulary of {vocab_size}: {bad[:5]}", "logit_bias")
