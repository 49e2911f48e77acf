#!/usr/bin/env bash
# What a fresh clone's first command spends installing (scripts/env.sh), per variant, in one run:
#   full     extras dev,demo,eval, pip byte-compiles everything (scripts/env.sh before the change)
#   demo     extras demo,eval (what scripts/demo.sh installs), byte-compiled
#   demo-nc  extras demo,eval with --no-compile (what scripts/demo.sh does now)
# Each variant: a new venv, pip upgrade, editable install from the pip cache; variants interleaved
# over REPEATS rounds so that load drifts hit them alike. Prints seconds and the ratio to `full`.
#   bash benchmarks/install_time.sh [REPEATS]        # repo root; needs the pip cache warm
set -uo pipefail
R="${1:-1}"; PY="${PYTHON:-python3}"; TMP="$(mktemp -d)"
declare -A total
for ((r = 0; r < R; r++)); do
  for v in full demo demo-nc; do
    case $v in full) X="dev,demo,eval"; NC="";; demo) X="demo,eval"; NC="";; demo-nc) X="demo,eval"; NC="--no-compile";; esac
    rm -rf "$TMP/venv"; t0=$(date +%s.%N)
    "$PY" -m venv "$TMP/venv"
    "$TMP/venv/bin/python" -m pip install -q --upgrade pip > /dev/null 2>&1
    "$TMP/venv/bin/python" -m pip install -q $NC -c constraints/cpu.txt -e ".[$X]" > "$TMP/$v.log" 2>&1 \
      || { echo "$v: install failed (see $TMP/$v.log)"; exit 1; }
    dt=$(echo "$(date +%s.%N) - $t0" | bc); total[$v]=$(echo "${total[$v]:-0} + $dt" | bc)
    echo "round $r $v: ${dt%.*} s"
  done
done
for v in full demo demo-nc; do
  echo "$v: $(echo "${total[$v]} / $R" | bc) s/install, x$(echo "scale=2; ${total[$v]} / ${total[full]}" | bc) of full"
done
rm -rf "$TMP"
