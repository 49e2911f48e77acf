#!/usr/bin/env bash
# Issue #12 item 4: the paper's protocol one size up, on one GPU, in under 10 minutes.
# OpenMoji at 128 px through the bundled tiny-openmoji AE (4x32x32 latents) -> stats -> a DiT-S/2
# base pre-trained for PRE_T seconds (gpu128-pretrain.toml) -> forked into baseline / LPL
# post-training of 1/5 of the base's steps (one seed: same batches, timesteps and noise) -> samples
# of the base and both arms from the same noise -> SWD per level + spectrum vs the train store, next
# to the held-out floor -> report_base.py tables + grids. Raw outputs in OUT (commit them under
# docs/results/). Run from the repository root with lplkit installed (or PYTHONPATH=.):
#   bash pipelines/openmoji-lpl/gpu128.sh docs/results/gpu-h200-openmoji128
# Budget on a GPU: PRE_T=240 s pre-training, then ~2 x 1/5 of it post-training + sampling/eval.
# TINY=1: a CPU dry run at 32 px with DiT-T/2 (plumbing only, not a measurement).
set -uo pipefail
OUT="${1:-${OUT:-gpu128-out}}"; mkdir -p "$OUT"
WORK="${WORK:-/tmp/lplkit-gpu128}"; mkdir -p "$WORK"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
L="$PY -m lplkit"
if [ "${TINY:-0}" = 1 ]; then
  DEV=cpu RES=32 LIMIT="--limit 128" PRE_T="${PRE_T:-180}" N_EVAL=32 SWD_DIRS=32 SAMPLE_STEPS=8
  SIZE="--model DiT-T/2 --batch-size 16"; BF16=""; STATS_N=64
else
  DEV=cuda RES=128 LIMIT="" PRE_T="${PRE_T:-240}" N_EVAL=256 SWD_DIRS=128 SAMPLE_STEPS=32
  SIZE=""; BF16="--bf16"; STATS_N=1024
fi
log() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$OUT/gpu128.txt"; }
log "gpu128: res $RES, device $DEV, pre-training budget ${PRE_T}s, work dir $WORK"
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu128.txt"
git rev-parse HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$OUT/gpu128.txt"
S="$WORK/om$RES.zarr"; T="$WORK/om$RES-test.zarr"
$L encode --dataset openmoji --res "$RES" --flip --split train --out "$S" --device "$DEV" $LIMIT --json > "$OUT/encode-train.json" 2>> "$OUT/gpu128.log" || { log "encode train failed"; exit 1; }
$L encode --dataset openmoji --res "$RES" --split test --out "$T" --device "$DEV" $LIMIT --json > "$OUT/encode-test.json" 2>> "$OUT/gpu128.log" || { log "encode test failed"; exit 1; }
log "encoded"
$L stats "$S" --samples "$STATS_N" --device "$DEV" --json > "$OUT/stats.json" 2>> "$OUT/gpu128.log" || { log "stats failed"; exit 1; }
log "stats"
# Pre-training under a wall-time budget: `timeout` ends it (rc 124 expected); the base is the newest
# complete checkpoint (checkpoints are written atomically).
timeout "$PRE_T" $L train --config pipelines/openmoji-lpl/gpu128-pretrain.toml --store "$S" \
  --out "$WORK/base" --device "$DEV" $BF16 $SIZE --json > "$OUT/pretrain.json" 2>> "$OUT/gpu128.log"
log "pre-training ended rc=$? (124 = budget reached)"
ls -d "$WORK/base/checkpoints"/step_* > /dev/null 2>&1 \
  || { log "no checkpoint within ${PRE_T}s: raise PRE_T (see $OUT/gpu128.log)"; exit 1; }
cp "$WORK/base/metrics.jsonl" "$OUT/pretrain-metrics.jsonl"
# The base itself against the floor (does it make glyphs at 128 px?).
$L sample --run "$WORK/base" --n "$N_EVAL" --seed 1234 --steps "$SAMPLE_STEPS" --sampler euler \
  --cfg 2.0 --out "$WORK/base-samples" --device "$DEV" --json > "$OUT/base-sample.json" 2>> "$OUT/gpu128.log"
$L eval --samples "$WORK/base-samples/samples.npz" --ref "$S" --floor "$T" --n "$N_EVAL" \
  --swd-dirs "$SWD_DIRS" --seed 0 --device "$DEV" --json > "$OUT/base-eval.json" 2>> "$OUT/gpu128.log"
cp "$WORK/base-samples/grid.png" "$OUT/base-grid.png" 2>/dev/null
log "base evaluated"
$PY pipelines/openmoji-lpl/from_base.py --store "$S" --test-store "$T" --runs "$WORK/abl" \
  --init "$WORK/base" --recipe pipelines/openmoji-lpl/gpu128-post.toml --post-fractions 0.2 \
  --seeds 0 --arms baseline,lpl --train-args "$BF16 $SIZE" --n-eval "$N_EVAL" \
  --sample-steps "$SAMPLE_STEPS" --swd-dirs "$SWD_DIRS" --device "$DEV" > "$OUT/arms.jsonl" 2>> "$OUT/gpu128.log" \
  || { log "post-training arms failed"; exit 1; }
log "arms done"
$PY pipelines/openmoji-lpl/report_base.py --runs "$WORK/abl" --store "$S" --img "$OUT" \
  --json "$OUT/results.json" > "$OUT/report.md" 2>> "$OUT/gpu128.log"
log "report rc=$?"
