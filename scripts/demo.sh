#!/usr/bin/env bash
# README command 1: install (CPU torch) and run the paper's protocol in miniature, offline, on the
# embedded default: OpenMoji glyphs at 64 px -> bundled tiny-openmoji autoencoder -> `lplkit stats`
# -> the bundled pre-trained base (openmoji-base, a U-Net that makes emoji) post-trained twice,
# without and with the LPL (same batches and noise) -> samples of both from the same noise -> SWD per
# level + spectrum against the store, next to the held-out floor -> OUT/compare.png.
#   bash scripts/demo.sh [OUT_DIR] [lplkit demo options, e.g. --steps 100 --limit 256]
# ~5 minutes on 2 idle CPU cores from a fresh clone, install included (docs/results.md); re-running resumes.
export LPLKIT_EXTRAS="${LPLKIT_EXTRAS:-demo,eval}"  # only what the demo runs
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
OUT="${1:-demo-out}"
shift $(( $# > 0 ? 1 : 0 ))
lplkit demo --out "$OUT" "$@"
lplkit verify "$OUT/openmoji-64.zarr"
echo "picture: $OUT/compare.png (real | baseline | LPL); samples: $OUT/samples/{baseline,lpl}/; metrics above" >&2
