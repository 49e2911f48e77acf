#!/usr/bin/env bash
# The GPU checks the issues ask for, as one short script for a lent GPU machine (see docs/benchmarks.md).
# Usage (repo root, CUDA machine, wheels for missing packages in .whl/): bash benchmarks/gpu_suite.sh OUTDIR
set -uo pipefail
OUT="${1:-${OUT:-gpu-out}}"; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, zarr; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'zarr', zarr.__version__)" | tee -a "$OUT/gpu.txt"
for step in ${STEPS:-lpl encode train}; do
  case "$step" in
    lpl) timeout 150 python3 benchmarks/lpl_speed.py --device cuda --dtype bf16 --ae sd --latent 32 --batch 32 \
           --depth 1 2 3 4 --ckpt both --json > "$OUT/lpl_speed.json" 2> "$OUT/lpl_speed.log" ;;
    encode) timeout ${ENC_T:-150} python3 benchmarks/encode_overhead.py --ae sd --res 256 --n ${ENC_N:-1024} --batch-size 64 \
           --workers 12 --device cuda --autocast bfloat16 --json > "$OUT/encode_overhead.json" 2> "$OUT/encode_overhead.log" ;;
    train) timeout ${TRAIN_T:-150} python3 benchmarks/train_step.py --device cuda --bf16 --model DiT-B/2 --ae sd --latent 32 \
           --batch 64 --gate 0.2 --reps 5 --loop-steps 20 > "$OUT/train_step.txt" 2> "$OUT/train_step.log" ;;
  esac
  echo "$step rc=$?" | tee -a "$OUT/gpu.txt"
done
