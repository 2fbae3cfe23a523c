#!/usr/bin/env bash
# Instructions per engine step, this tree against a git revision: scripts/step-instructions.sh REV [SEQS] [CONTEXT]
#
# `shunter bench step` times the host's work per step; on a shared VM its cells move by 10-20%
# from run to run, more than most single changes to the step. This counts the CPU instructions
# of the same steps instead (valgrind's callgrind; the same count to 0.01% run after run): the
# real engine and runner over the null model (`loadtest/bench_step.py`'s `build`, "after" path),
# SEQS running sequences (default 256) of CONTEXT prompt tokens (default 128), 100 decode steps
# counted after 50 of warm-up (callgrind counts only between `callgrind_control -i on/off`).
# REV is checked out into a temporary worktree; needs valgrind (apt-get install valgrind) and the
# README's environment (.venv). Prints instructions per step for each, and the ratio.
set -euo pipefail
rev=${1:?usage: scripts/step-instructions.sh REV [SEQS] [CONTEXT]}
seqs=${2:-256}
context=${3:-128}
root=$(cd "$(dirname "$0")/.." && pwd)
python=$root/.venv/bin/python
command -v callgrind_control >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add --detach "$work/base" "$rev" >/dev/null 2>&1
cat > "$work/steps.py" <<'EOF'
import os, subprocess, sys
from shunter.loadtest.bench_step import build
seqs, context, steps = int(sys.argv[1]), int(sys.argv[2]), 100
engine = build(seqs, context, 400 + steps, "after", "cpu")
for _ in range(50):
    engine.step()
subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True, check=True)
for _ in range(steps):
    engine.step()
subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], capture_output=True, check=True)
EOF
count() {  # tree -> instructions per step
    local out=$work/callgrind.$RANDOM
    PYTHONPATH=$1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
        "$python" "$work/steps.py" "$seqs" "$context" >/dev/null 2>&1
    callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print int($1 / 100)}'
}
base=$(count "$work/base")
this=$(count "$root")
echo "instructions per step, $seqs sequences x $context tokens: $rev $base, this tree $this," \
     "ratio $(awk -v a="$this" -v b="$base" 'BEGIN {printf "%.3f", a / b}')"
