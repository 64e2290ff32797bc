#!/usr/bin/env bash
# The GPU benchmark in one call: SeaChange's training step against the reference loop on full-size SD 1.5 shapes
# (random weights, 512 px), JSON, log and table under $OUT (or ./bench-out), in two parts that each keep what
# they measured if their time runs out (a device call may last 600 s):
#   a  the reference loop and the uncompiled presets at batch 1/4/16 (sd15_finetune) and 1/4 (lowvram), ~4 min
#   b  the reference and the compiled preset at batch 16 (the throughput target), ~4 min, two of them compiling
#   c  a LoRA's peak memory through the real trainer against its estimate (benchmarks/bench_estimate.py --real
#      cuda: sd15_lora, batch 1), with gradient checkpointing and without, ~4 min; not in the default run (a and
#      b fill one 600 s call)
#   d  the memory estimate before Start against the real peak (benchmarks/bench_estimate.py --real cuda: each
#      built-in preset at batch 1 and 4, eager), ~5 min; not in the default run
# `gpu_bench.sh a`, `gpu_bench.sh b`, `gpu_bench.sh c` or `gpu_bench.sh d` runs one part; no argument runs a and b.
# The GPU image has torch, transformers, accelerate, safetensors and tensorboard but not diffusers,
# bitsandbytes or peft: put their wheels in .whl/ first (see benchmarks/README.md) and carry .whl.
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
part() {  # name, seconds, bench arguments
  local name=$1 limit=$2
  shift 2
  timeout "$limit" python3 -m trainer bench --device cuda --json "$OUT/bench-$name.json" "$@" 2>&1 \
    | tee "$OUT/bench-$name.log"
}
lora() {  # name, seconds, bench_estimate arguments: JSON lines on stdout, the log beside it
  local name=$1 limit=$2
  shift 2
  timeout "$limit" python3 benchmarks/bench_estimate.py --real cuda --presets sd15_lora --batch-sizes 1 \
    --steps 16 "$@" 2>"$OUT/lora-$name.log" | tee "$OUT/lora-$name.json"
}
case "${1:-all}" in
  a|all) part a 290 --presets sd15_finetune,sd15_finetune_lowvram ;;&
  b|all) part b 270 --presets sd15_finetune_fast --batch-sizes 16 ;;
  c) lora checkpointing 280
     lora no-checkpointing 280 --set training.gradient_checkpointing=false ;;
  d) timeout 560 python3 benchmarks/bench_estimate.py --real cuda --json "$OUT/estimate.json" 2>"$OUT/estimate.log" \
       | tee "$OUT/estimate.jsonl" ;;
esac
