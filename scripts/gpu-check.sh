#!/usr/bin/env bash
# The GPU in one command: scripts/gpu-check.sh OUTDIR
#
# On a machine with one NVIDIA GPU and PyTorch, Triton and transformers already installed (no
# network, no Ray needed), in under 8 minutes: install Shunter without dependencies, run
# `pytest -m gpu`, a quick `shunter bench kernels`, `shunter bench staircase` (step time at 16..1,024
# tokens in steps of 16: the tile boundaries, issue 30), a quick `shunter bench step` (host time per
# step over a null model, before and after issue 25), a quick `shunter bench migration` (downtime of
# a live move against stop-and-copy at 1k-16k tokens, issue 23), a `shunter bench engine` sized to
# fit and a quick `shunter bench kv-tiers` (a prefix loaded from the CPU tier against recomputed, at
# 1k and 8k tokens, issue 26), and write into OUTDIR: gpu-check.log (every step's output),
# pytest-gpu.xml, bench_kernels.json/.png, bench_staircase.json/.png, bench_step.json,
# bench_migration.json, bench_engine.json, bench_kv_tiers.json/.png, summary.json and summary.md
# (each step's status and time, headline numbers
# against the GPU goals). Every step has its own timeout inside an overall budget, and the summary
# is rewritten after each step, so a hang or a cut-off still leaves what finished.
#
# GPU_CHECK_SMOKE=1 runs the same steps on the CPU at toy sizes (the kernel bench in Triton's
# interpreter, the engine on its torch reference kernels): it proves the harness and measures
# nothing (tests/scripts/test_gpu_check.py runs it).
# PYTHON picks the interpreter (default python3); GPU_CHECK_BUDGET_S the overall budget (450).
set -uo pipefail

OUT=${1:?usage: scripts/gpu-check.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
SMOKE=${GPU_CHECK_SMOKE:-0}
SCRATCH=$(mktemp -d)
STEPS=$SCRATCH/steps.jsonl
LOG=$OUT/gpu-check.log
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_BUDGET_S:-450} ))
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
: > "$LOG"
: > "$STEPS"
SMOKE_FLAG=()
if [ "$SMOKE" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""
  SMOKE_FLAG=(--smoke)
fi

summarize() {
  "$PY" "$ROOT/loadtest/gpu_check_summary.py" --steps "$STEPS" --out "$OUT" "${SMOKE_FLAG[@]}" >> "$LOG" 2>&1 \
    || echo "summary failed" >> "$LOG"
}

# step NAME LIMIT_S COMMAND...: run with its own timeout (cut to what the budget has left), log, record.
step() {
  local name=$1 limit=$2 left rc start ms status=ok
  shift 2
  left=$(( DEADLINE - $(date +%s) ))
  (( left < limit )) && limit=$left
  start=$(date +%s%N)
  if (( limit < 5 )); then
    rc=124
    echo "=== $name: skipped, the budget is spent" >> "$LOG"
  else
    echo "=== $name (limit ${limit}s): $*" >> "$LOG"
    timeout --kill-after=15 "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
  fi
  (( rc == 124 || rc == 137 )) && status=timeout
  (( rc != 0 )) && [ "$status" = ok ] && status=failed
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '{"step": "%s", "status": "%s", "rc": %d, "seconds": %d.%03d}\n' \
    "$name" "$status" "$rc" $(( ms / 1000 )) $(( ms % 1000 )) >> "$STEPS"
  echo "gpu-check: $name $status (rc $rc, ${ms} ms)"
  summarize
}

IMPORTS='import shunter.replica.llm, shunter.kernels.ops, shunter.loadtest.bench_engine, shunter.loadtest.bench_kernels, shunter.loadtest.bench_step, shunter.loadtest.bench_staircase, shunter.loadtest.bench_migration, shunter.loadtest.bench_kv_tiers'
importable() {
  (cd "$SCRATCH" && "$PY" -c "$IMPORTS" && "$PY" -m shunter.cli --help > /dev/null) >> "$LOG" 2>&1
}

ENV_INFO='
import json, platform, shutil, subprocess
import numpy, torch, transformers
info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "numpy": numpy.__version__, "cuda": torch.cuda.is_available()}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name()
if shutil.which("nvidia-smi"):
    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    info["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
print("ENV " + json.dumps(info))
'

step env 30 "$PY" -c "$ENV_INFO"
if importable; then
  step install 10 echo "shunter is importable: nothing to install"
else
  step install 120 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .
  if ! importable; then  # no setuptools here: the checkout on the path is enough (shunter/source_layout.py)
    echo "pip install did not make shunter importable: putting the checkout on PYTHONPATH" >> "$LOG"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  fi
  step import-check 60 bash -c "cd '$SCRATCH' && '$PY' -c '$IMPORTS' && '$PY' -m shunter.cli --help > /dev/null"
fi
# Ray-free test folders only (router/ and proto/ need Ray and the grpc tooling).
step pytest-gpu 170 "$PY" -m pytest -m gpu -p no:cacheprovider -rA --timeout 90 --junitxml="$OUT/pytest-gpu.xml" \
  tests/kernels tests/replica tests/loadtest
if [ "$SMOKE" = 1 ]; then
  step bench-kernels 60 env TRITON_INTERPRET=1 "$PY" -m shunter.cli bench kernels --device cpu --num-seqs 1 2 --contexts 48 \
    --num-q-heads 4 --num-kv-heads 2 --head-dim 32 --graph-table-tokens 512 --samples 1 --calls 2 \
    --out "$OUT/bench_kernels.json"
  step bench-staircase 60 "$PY" -m shunter.cli bench staircase --model random:tiny --device cpu --max-tokens 64 \
    --repeats 1 --out "$OUT/bench_staircase.json"
  step bench-step 60 "$PY" -m shunter.cli bench step --device cpu --seqs 4 --contexts 16 --steps 5 \
    --out "$OUT/bench_step.json"
  step bench-engine 90 "$PY" -m shunter.cli bench engine --model random:tiny --device cpu --num-requests 8 \
    --input-median 12 --output-median 6 --cap 40 --static-requests 4 --hf-batch-size 2 --max-num-seqs 4 --max-num-batched-tokens 64 \
    --out "$OUT/bench_engine.json"
  step bench-migration 60 "$PY" -m shunter.cli bench migration --model random:tiny --device cpu --contexts 64 \
    --samples 1 --others 1 --move-after 2 --out "$OUT/bench_migration.json"
  step bench-kv-tiers 60 "$PY" -m shunter.cli bench kv-tiers --model random:tiny --device cpu --lengths 64 \
    --repeats 1 --cpu-kv-gib 0.01 --out "$OUT/bench_kv_tiers.json"
else
  step bench-kernels 80 "$PY" -m shunter.cli bench kernels --num-seqs 1 8 64 --contexts 2048 8192 \
    --samples 10 --calls 20 --out "$OUT/bench_kernels.json"
  # Mistral-7B's GEMM shapes (hidden 4,096, MLP 14,336): the staircase the simulator's H100 model assumes.
  step bench-staircase 60 "$PY" -m shunter.cli bench staircase --model random:llama-3-8b --device cuda \
    --max-tokens 1024 --stride 16 --out "$OUT/bench_staircase.json"
  step bench-step 60 "$PY" -m shunter.cli bench step --device cuda --steps 50 --out "$OUT/bench_step.json"
  # On the first H100 run (2026-11-27) Shunter took 6 s, HF static generate 85 s on 64 requests,
  # and HF continuous batching did not finish all 256 in the 125 s left: it gets the first 64.
  step bench-engine 300 "$PY" -m shunter.cli bench engine --model random:llama-3.2-1b --num-requests 256 \
    --cap 1024 --static-requests 64 --hf-batch-size 64 --continuous-requests 64 \
    --max-num-seqs 256 --max-num-batched-tokens 2048 \
    --out "$OUT/bench_engine.json"
  # Last: it gets what the budget has left after the engine (issue 25's goals come first).
  # In-process (no Ray here): the staging copy and the commit's downtime, live against stop-and-copy.
  step bench-migration 60 "$PY" -m shunter.cli bench migration --model random:llama-3.2-1b --device cuda \
    --contexts 1024 4096 16384 --samples 3 --out "$OUT/bench_migration.json"
  # Then the CPU tier: a prefix evicted from the device comes back over PCIe or is prefilled again.
  step bench-kv-tiers 60 "$PY" -m shunter.cli bench kv-tiers --model random:llama-3.2-1b --device cuda \
    --lengths 1024 8192 --repeats 3 --cpu-kv-gib 4 --out "$OUT/bench_kv_tiers.json"
fi
rm -rf "$SCRATCH"
cat "$OUT/summary.md"
if grep -q '"status": "\(failed\|timeout\)"' "$OUT/summary.json"; then
  exit 1
fi
