#!/usr/bin/env bash
# Issue #23 item 6: the text-to-image protocol one size up, on one GPU, in under 10 minutes.
# OpenMoji at 128 px through the bundled tiny-openmoji AE (4x32x32 latents), captions (Unicode
# names) cached with the bundled openmoji-clip encoder -> stats -> a PixArt-S/2 text-to-image base
# pre-trained for PRE_T seconds (gpu128-pretrain.toml) -> forked into baseline / LPL post-training
# of 1/5 of the base's steps (one seed: same batches, timesteps, noise and caption drops) -> per
# arm: the training losses, and (where `lplkit sample` has --prompts-from-store) samples from the
# train captions evaluated by `lplkit eval` against the train store with the held-out floor.
# Raw outputs in OUT (commit them under docs/results/). Run from the repository root:
#   bash pipelines/openmoji-t2i/gpu128.sh docs/results/gpu-h100-openmoji-t2i128
# TINY=1: a CPU dry run at 32 px, 64 glyphs, PixArt-T/2, a few steps (plumbing only; a minute or two
# on a quiet CPU, ~15 min on the loaded shared dev box, where PRE_T=60 s bought 1 step).
set -uo pipefail
OUT="${1:-${OUT:-gpu128-t2i-out}}"; mkdir -p "$OUT"
WORK="${WORK:-/tmp/lplkit-gpu128-t2i}"; mkdir -p "$WORK"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
L="$PY -m lplkit"
TEXT="--text-encoder openmoji-clip --text-preset sd-clip --text-max-tokens 16"
if [ "${TINY:-0}" = 1 ]; then
  DEV=cpu RES=32 LIMIT="--limit 64" PRE_T="${PRE_T:-60}" N_EVAL=16 SWD_DIRS=16 SAMPLE_STEPS=4
  SIZE="--model PixArt-T/2 --batch-size 16"; BF16=""; STATS_N=32; PRE_STEPS="--steps 4 --ckpt-every 2"
else
  DEV=cuda RES=128 LIMIT="" PRE_T="${PRE_T:-240}" N_EVAL=256 SWD_DIRS=128 SAMPLE_STEPS=32
  SIZE=""; BF16="--bf16"; STATS_N=1024; PRE_STEPS=""
fi
log() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$OUT/gpu128.txt"; }
log "gpu128-t2i: res $RES, device $DEV, pre-training budget ${PRE_T}s, work dir $WORK"
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu128.txt"
git rev-parse HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$OUT/gpu128.txt"
S="$WORK/om$RES-t2i.zarr"; T="$WORK/om$RES-test.zarr"
# No --flip: "leftwards arrow" must stay left of its caption.
$L encode --dataset openmoji --res "$RES" --split train --out "$S" --device "$DEV" $LIMIT $TEXT --json > "$OUT/encode-train.json" 2>> "$OUT/gpu128.log" || { log "encode train failed"; exit 1; }
$L encode --dataset openmoji --res "$RES" --split test --out "$T" --device "$DEV" $LIMIT --json > "$OUT/encode-test.json" 2>> "$OUT/gpu128.log" || { log "encode test failed"; exit 1; }
log "encoded"
$L stats "$S" --samples "$STATS_N" --device "$DEV" --json > "$OUT/stats.json" 2>> "$OUT/gpu128.log" || { log "stats failed"; exit 1; }
log "stats"
# Pre-training under a wall-time budget: `timeout` ends it (rc 124 expected); the base is the newest
# complete checkpoint (checkpoints are written atomically).
timeout "$PRE_T" $L train --config pipelines/openmoji-t2i/gpu128-pretrain.toml --store "$S" \
  --out "$WORK/base" --device "$DEV" $BF16 $SIZE $PRE_STEPS --json > "$OUT/pretrain.json" 2>> "$OUT/gpu128.log"
log "pre-training ended rc=$? (124 = budget reached)"
last=$(ls -d "$WORK/base/checkpoints"/step_* 2>/dev/null | sort | tail -n 1)
[ -n "$last" ] || { log "no checkpoint within ${PRE_T}s: raise PRE_T (see $OUT/gpu128.log)"; exit 1; }
cp "$WORK/base/metrics.jsonl" "$OUT/pretrain-metrics.jsonl"
base_steps=$((10#${last##*step_}))
post=$(( base_steps / 5 > 1 ? base_steps / 5 : 1 ))
log "base: step $base_steps; post-training $post steps per arm"
has_prompts=0
$L sample --help 2>/dev/null | grep -q -- "--prompts-from-store" && has_prompts=1
for arm in baseline lpl; do
  flags=""; [ "$arm" = lpl ] && flags="--lpl"
  run="$WORK/arms/$arm"
  $L train --config pipelines/openmoji-t2i/gpu128-post.toml --store "$S" --out "$run" \
    --init "$WORK/base" --seed 0 --steps "$post" --device "$DEV" $BF16 $SIZE $flags --json \
    > "$OUT/train-$arm.json" 2>> "$OUT/gpu128.log" || { log "arm $arm: training failed"; exit 1; }
  cp "$run/metrics.jsonl" "$OUT/metrics-$arm.jsonl"
  log "arm $arm trained"
  if [ "$has_prompts" = 1 ]; then
    $L sample --run "$run" --prompts-from-store --n "$N_EVAL" --seed 1234 --steps "$SAMPLE_STEPS" \
      --cfg 2.0 --out "$run/samples" --device "$DEV" --json > "$OUT/sample-$arm.json" 2>> "$OUT/gpu128.log" \
      && $L eval --samples "$run/samples/samples.npz" --ref "$S" --floor "$T" --n "$N_EVAL" \
        --swd-dirs "$SWD_DIRS" --seed 0 --device "$DEV" --json > "$OUT/eval-$arm.json" 2>> "$OUT/gpu128.log"
    log "arm $arm sampled + evaluated rc=$?"
    cp "$run/samples/grid.png" "$OUT/grid-$arm.png" 2>/dev/null
  else
    log "arm $arm: not sampled (this lplkit sample has no --prompts-from-store yet)"
  fi
done
log "done"
