"""The cascade config: ``schema.py`` (every field, validated by pydantic; errors name the field path)
and ``loading.py`` (YAML, paths relative to the file or the package, calibration artifacts, token
digests). One config drives ``cascade serve``, Serve YAML and cluster deploys.

May import: pydantic, yaml and ``serving.engines``' options models (which import no torch). Not Ray:
Serve's own AutoscalingConfig validates ``serve.autoscaling_config`` when a config loads, imported then.
"""

from serving.config.loading import digested, load_config, parse_config, portable
from serving.config.schema import (
    DEFAULT_CONFIG,
    PACKAGE_DIR,
    TOY_CONFIG,
    Auth,
    CascadeConfig,
    ConfigError,
    Cost,
    Deferral,
    EngineConfig,
    GenerationDefaults,
    Limits,
    LoadAware,
    ModelSource,
    Reliability,
    ServeOptions,
    Server,
    Shadow,
    Tier,
)
from serving.engines.continuous import ContinuousEngineConfig  # each engine owns its options model
from serving.engines.static import StaticEngineConfig
from serving.engines.vllm_engine import VLLMEngineConfig

__all__ = [
    "DEFAULT_CONFIG",
    "PACKAGE_DIR",
    "TOY_CONFIG",
    "Auth",
    "CascadeConfig",
    "ConfigError",
    "ContinuousEngineConfig",
    "Cost",
    "Deferral",
    "EngineConfig",
    "GenerationDefaults",
    "Limits",
    "LoadAware",
    "ModelSource",
    "Reliability",
    "Server",
    "ServeOptions",
    "Shadow",
    "StaticEngineConfig",
    "Tier",
    "VLLMEngineConfig",
    "digested",
    "load_config",
    "parse_config",
    "portable",
]
