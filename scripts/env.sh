# Sourced by scripts/test.sh and scripts/demo.sh: create/refresh the project venv with CPU torch.
# The constraints file pins torch to the CPU wheel (never a multi-GB CUDA build on CPU machines).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LPLKIT_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# scripts/test.sh needs the dev tools; scripts/demo.sh sets LPLKIT_EXTRAS=demo,eval (a fresh clone's
# first command installs only what the demo runs: no test servers, linters or trackers).
# --no-compile: pip would byte-compile every installed module (all of torch) up front; Python
# compiles the ones actually imported on first use instead (install time: docs/results.md).
"$VENV/bin/python" -m pip install -q --no-compile -c "$ROOT/constraints/cpu.txt" -e "$ROOT[${LPLKIT_EXTRAS:-dev,demo,eval}]"
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
cd "$ROOT"
