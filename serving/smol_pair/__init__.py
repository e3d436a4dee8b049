"""The realistic pair: a student distilled from SmolLM2-135M-Instruct (weak) and SmolLM2 itself (strong).

``answers`` makes the teacher's answers to the prompt family (``serving/tasks/short_answers.py``),
``train`` the student from them, ``convert`` the HF copy of SmolLM2 that vLLM serves; ``config.yaml``
(strong tier on the continuous engine, from the GGUF) and ``config_vllm.yaml`` (strong tier on vLLM) serve
the pair. Model card: ``README.md`` here."""

from pathlib import Path

HERE = Path(__file__).parent
CONFIG = HERE / "config.yaml"
CONFIG_VLLM = HERE / "config_vllm.yaml"
