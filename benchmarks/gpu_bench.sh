#!/usr/bin/env bash
# The GPU benchmark in one call: SeaChange's training step against the reference loop on full-size SD 1.5 shapes
# (random weights, 512 px, batch 1/4/16, both fine-tune presets), JSON and a table under $OUT (or ./bench-out).
# The GPU image has torch, transformers, accelerate, safetensors and tensorboard but not diffusers or
# bitsandbytes: put their wheels in .whl/ first (see benchmarks/README.md) and carry .whl.
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 540 python3 -m trainer bench --device cuda --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
