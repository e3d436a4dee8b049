"""Shared fixtures: tiny random Llama models built on the fly, the shipped pair's paths, nginx."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "serving" / "default_models"


def build_tiny_llama(out: Path, seed: int = 0, chat_template: bool = True) -> Path:
    """A randomly initialised 2-layer Llama with the project's character tokenizer, saved like a hub model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from serving.default_models.train import build_tokenizer

    tok = build_tokenizer()
    if not chat_template:
        tok.chat_template = None
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def install_nginx() -> str:
    """Debian as root (CI): install nginx-light with apt-get (updating the index only if the
    first try fails). Returns what went wrong, or "" when it worked."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get") or not Path("/etc/debian_version").exists():
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
    from serving.tls import find_nginx

    exe = find_nginx()
    if exe is None:
        why = install_nginx()
        exe = find_nginx()
        if exe is None:
            pytest.skip(f"nginx is not installed and could not be installed ({why or 'no nginx after install'}); "
                        "Debian: apt-get install nginx-light")
    return exe
