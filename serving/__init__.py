"""cascade-serving: a language-model cascade on Ray Serve.

Folders by role (each ``__init__`` says what lives there and what it may import):

- ``core/``          the walk over tiers, one tier attempt, request/answer types, errors, receipts, breaker
- ``deferral/``      deferral rules and their incremental forms, post-hoc models, budget controller, load-aware
- ``engines/``       the engine interface and registry, one module per engine (continuous, static, vllm)
- ``config/``        the config schema (pydantic) and its loading (YAML, paths, artifacts)
- ``fronts/``        wire mappings: gRPC messages and the OpenAI API to the walk's request and back, one status table
- ``serve/``         thin Ray Serve wrappers: Router, Tier, tier client, app builder, autoscaling policy
- ``observability/`` metric specs, shadow sampling
- ``evaluation/``    offline runs, quality metrics, deferral curves, fitting, thresholds, calibration
- ``ops/``           the CLI, cluster build, planner and probe, load generator, TLS front, gRPC client
- ``tasks/``, ``default_models/``: the shipped arithmetic task and its weak/strong pair; ``tasks/short_answers.py``
  and ``smol_pair/``: the realistic pair (a student distilled from SmolLM2-135M, then SmolLM2)

Layering: core, deferral, config and fronts import no Ray, grpc, FastAPI or torch (a test checks);
engines import torch/transformers/vLLM only when an engine is built; Ray lives in serve/ and ops/.
"""
