#!/usr/bin/env bash
# README command 1: install (CPU torch) and run the whole pipeline offline on the embedded default:
# OpenMoji glyphs at 64 px -> bundled tiny-openmoji autoencoder -> `lplkit stats` -> DiT-T/2 trained
# with the LPL in its last fifth -> sample grid -> SWD per level + spectrum against the store.
#   bash scripts/demo.sh [OUT_DIR] [lplkit demo options, e.g. --steps 300 --limit 256]
# ~10 minutes on 2 CPU cores (docs/results.md); re-running resumes.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
OUT="${1:-demo-out}"
shift $(( $# > 0 ? 1 : 0 ))
lplkit demo --out "$OUT" "$@"
lplkit verify "$OUT/openmoji-64.zarr"
echo "pictures: $OUT/samples/grid.png (samples), $OUT/samples/images/*.png; metrics above" >&2
