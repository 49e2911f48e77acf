#!/usr/bin/env bash
# README command 1: install (CPU torch) and run the main job on the embedded default.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
OUT="${1:-demo-out}"
lplkit encode --dataset openmoji --res 64 --out "$OUT/openmoji-64.zarr"
lplkit verify "$OUT/openmoji-64.zarr"
lplkit info "$OUT/openmoji-64.zarr"
