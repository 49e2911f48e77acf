#!/usr/bin/env bash
# Every GPU check the issues ask for, as one script for a lent GPU machine (see docs/benchmarks.md).
#   bash benchmarks/gpu_suite.sh docs/results/gpu-h200-issue15     # repo root, CUDA machine
# Wheels for packages missing on the machine go in .whl/ (installed to /tmp/site, no index).
# Steps (STEPS="lpl train loop encode" by default), each under its own timeout, < 10 min in all:
#   lpl     LPL fwd+bwd, SD-sized decoder, 32x32 latents, batch 32 (8 gated), bf16, depth 4:
#           eager vs torch.compile vs 16x16 crops (goal: compiled >= 1.5x eager)
#   train   the user configuration: DiT-XL/2, SD-sized decoder, 32x32x4 latents, paper preset,
#           20% gate, per-GPU batch 32, bf16, eager vs compiled, no-LPL vs LPL, step time + peak
#           memory (goal: LPL step <= 2.0x the no-LPL step)
#   loop    trainer loop vs a bare PyTorch loop, DiT-B/2, batch 64 (goal: overhead <= 3%)
#   encode  encode pipeline vs encoder alone at steady state, n = 4096 (goal: >= 0.90)
# Not in the default set (it alone needs ~10 min; run it in its own session):
#   openmoji128  issue #12 item 4, the LPL protocol one size up (pipelines/openmoji-lpl/gpu128.sh):
#           STEPS=openmoji128 bash benchmarks/gpu_suite.sh docs/results/gpu-h200-openmoji128
#   openmoji-t2i128  issue #23 item 6, the same protocol for a text-to-image PixArt-S/2 with the
#           bundled openmoji-clip captions (pipelines/openmoji-t2i/gpu128.sh), its own session too:
#           STEPS=openmoji-t2i128 bash benchmarks/gpu_suite.sh docs/results/gpu-h100-openmoji-t2i128
# TINY=1: the same plumbing on a CPU with tiny sizes (a dry run of this script, not a measurement).
set -uo pipefail
OUT="${1:-${OUT:-gpu-out}}"; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if [ "${TINY:-0}" = 1 ]; then
  DEV="--device cpu"; AMP="--dtype fp32"; BF16=""
  LPL_SIZE="--ae tiny --latent 8 --batch 8 --depth 1 --crop 4 --repeats 1 --compile ${TINY_COMPILE:-off}"
  TRAIN_SIZE="--size tiny --batch 8 --compile ${TINY_COMPILE:-off} --crop 4 --reps 1 --warmup 1"
  LOOP_SIZE="--size tiny --batch 8 --loop-steps 10"
  ENC_SIZE="--ae tiny --res 32 --n 64 --batch-size 16 --workers 1 --shard-size 32 --repeats 1"
  T=${T:-300}
  echo "TINY=1: CPU dry run (plumbing only)" | tee "$OUT/gpu.txt"
else
  DEV="--device cuda"; AMP="--dtype bf16"; BF16="--bf16"
  LPL_SIZE="--ae sd --latent 32 --batch 32 --depth 4 --crop 16 --repeats 5 --compile both --check"
  TRAIN_SIZE="--size xl --gate 0.2 --compile both --reps 5 --warmup 3"
  LOOP_SIZE="--model DiT-B/2 --ae sd --latent 32 --batch 64 --loop-steps 60"
  ENC_SIZE="--ae sd --res 256 --n ${ENC_N:-4096} --batch-size 64 --workers 12 --shard-size 512 --autocast bfloat16"
  T=""
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
$PY -c "import torch, diffusers, zarr; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'zarr', zarr.__version__)" | tee -a "$OUT/gpu.txt"
git rev-parse HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$OUT/gpu.txt"
for step in ${STEPS:-lpl train loop encode}; do
  start=$(date +%s)
  case "$step" in
    lpl) timeout ${T:-${LPL_T:-180}} $PY benchmarks/lpl_speed.py $DEV $AMP $LPL_SIZE --ckpt off --no-naive \
           --json > "$OUT/lpl_speed.json" 2> "$OUT/lpl_speed.log" ;;
    train) timeout ${T:-${TRAIN_T:-220}} $PY benchmarks/train_step.py $DEV $BF16 $TRAIN_SIZE --no-loop \
           > "$OUT/train_step_xl.txt" 2> "$OUT/train_step_xl.log" ;;
    loop) timeout ${T:-${LOOP_T:-70}} $PY benchmarks/train_step.py $DEV $BF16 $LOOP_SIZE --no-steps \
           > "$OUT/train_loop.txt" 2> "$OUT/train_loop.log" ;;
    encode) timeout ${T:-${ENC_T:-100}} $PY benchmarks/encode_overhead.py $DEV $ENC_SIZE \
           --json > "$OUT/encode_overhead.json" 2> "$OUT/encode_overhead.log" ;;
    openmoji128) timeout ${T:-${O128_T:-590}} env PYTHON="$PY" bash pipelines/openmoji-lpl/gpu128.sh \
           "$OUT/openmoji128" > "$OUT/openmoji128.log" 2>&1 ;;
    openmoji-t2i128) timeout ${T:-${T2I_T:-590}} env PYTHON="$PY" bash pipelines/openmoji-t2i/gpu128.sh \
           "$OUT/openmoji-t2i128" > "$OUT/openmoji-t2i128.log" 2>&1 ;;
    *) echo "unknown step $step" >&2; false ;;
  esac
  rc=$?
  echo "$step rc=$rc $(( $(date +%s) - start ))s" | tee -a "$OUT/gpu.txt"
done
