"""Engines: a prompt in -> a token stream with log-probs out, one model each. No Ray here; torch,
transformers and vLLM load when an engine is built, not when these modules are imported.

``base.py`` is the interface every engine implements (async per-request stream, cancel by closing it,
score a continuation, count tokens, context length, stats) and the options base. One module per
engine owns its options model and its engine class; ``ENGINES`` is the one registry: a tier's
``engine.name`` picks the entry, and the config's ``engine`` field is the union of the options models
listed here. A new engine is one module plus one entry here.
"""

from __future__ import annotations

import importlib

from serving.engines.base import Engine, EngineOptions, EngineStats, agreeing_prefix, verify_block, verify_draft
from serving.engines.continuous import ContinuousEngineConfig
from serving.engines.static import StaticEngineConfig
from serving.engines.vllm_engine import VLLMEngineConfig

# name -> (its options model, "module:EngineClass")
ENGINES: dict[str, tuple[type[EngineOptions], str]] = {
    "continuous": (ContinuousEngineConfig, "serving.engines.continuous:ContinuousEngine"),
    "static": (StaticEngineConfig, "serving.engines.static:StaticEngine"),
    "vllm": (VLLMEngineConfig, "serving.engines.vllm_engine:VLLMEngine"),
}


def build_engine(tier) -> Engine:
    """The engine a tier's config names, loaded with the tier's model (imports torch lazily)."""
    module, _, cls = ENGINES[tier.engine.name][1].partition(":")
    return getattr(importlib.import_module(module), cls)(tier)


__all__ = [
    "ENGINES",
    "Engine",
    "EngineOptions",
    "EngineStats",
    "agreeing_prefix",
    "build_engine",
    "verify_block",
    "verify_draft",
]
