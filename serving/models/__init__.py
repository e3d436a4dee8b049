"""Engines: text in -> a token stream with log-probs out. No Ray here.

``ENGINES`` is the one registry: a tier's ``engine.name`` picks the class; a new engine is one
module plus one entry here (and its options model in ``serving.config``).
"""

from __future__ import annotations

import importlib

from serving.models.base import (Chunk, Draft, Engine, EngineError, EngineStats, Generation, GenerationRequest,
                                 InvalidInput, agreeing_prefix, verify_draft)

ENGINES = {
    "continuous": "serving.models.continuous:ContinuousEngine",
    "static": "serving.models.static:StaticEngine",
    "vllm": "serving.models.vllm_engine:VLLMEngine",
}


def build_engine(tier) -> Engine:
    """The engine a tier's config names, loaded with the tier's model (imports torch lazily)."""
    module, _, cls = ENGINES[tier.engine.name].partition(":")
    return getattr(importlib.import_module(module), cls)(tier)


__all__ = ["Chunk", "Draft", "ENGINES", "agreeing_prefix", "verify_draft", "Engine", "EngineError", "EngineStats", "Generation", "GenerationRequest",
           "InvalidInput", "build_engine"]
