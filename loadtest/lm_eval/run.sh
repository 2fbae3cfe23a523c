#!/usr/bin/env bash
# Issue 27's lm-evaluation-harness check, end to end: the same task on the same SmolLM2 weights
# through Shunter's OpenAI gateway (lm_eval's `local-completions`, which asks /v1/completions for
# `echo` + `logprobs` over token ids) and through lm_eval's own `hf` model (float32, and float64
# as the exact reference), then a per-sample comparison (compare.py). Run from the repository root:
#
#   python3 -m venv /tmp/lmeval-venv && /tmp/lmeval-venv/bin/pip install torch==2.13.0
#   /tmp/lmeval-venv/bin/pip install -c <(echo torch==2.13.0) "lm-eval[hf,api]==0.4.13"
#   PY=.venv/bin/python bash loadtest/lm_eval/run.sh        # PY: the project's venv (scripts/install.sh)
#
# LMEVAL_VENV (default /tmp/lmeval-venv) is the lm-eval venv; OUT (default loadtest/results/lm_eval)
# receives each run's results and samples files, compare_*.txt/json and env.txt. One server (one
# replica, one torch thread, free loopback ports) runs while its lm_eval runs and is stopped before
# the hf runs; the first `shunter serve` converts the model into the Shunter cache, which the hf runs
# then load. Nothing is downloaded (HF_*_OFFLINE). Exit status: compare.py's against hf float32
# (0: accuracy within 0.5 points and every loglikelihood within 1e-4).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
LMEVAL_VENV=${LMEVAL_VENV:-/tmp/lmeval-venv}
OUT=${OUT:-loadtest/results/lm_eval}
MODEL=smollm2-135m-instruct
MODEL_DIR=${SHUNTER_CACHE_DIR:-$HOME/.cache/shunter}/$MODEL
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
WORK=$(mktemp -d)
START_UPTIME=$(uptime)
mkdir -p "$OUT"
read -r GRPC_PORT HTTP_PORT < <("$PY" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
"$PY" -m shunter.cli serve --model "$MODEL" --replicas 1 --num-threads 1 --port "$GRPC_PORT" \
    --http-port "$HTTP_PORT" --metrics-port 0 > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$HTTP_PORT/health" >/dev/null && break
    kill -0 $SERVER 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
    sleep 1
done
TASK=(--tasks shunter_mc --include_path loadtest/lm_eval --log_samples)
run() {  # NAME, then lm_eval's arguments: its results and samples files go to OUT/NAME/
    "$LMEVAL_VENV/bin/lm_eval" "${@:2}" "${TASK[@]}" --output_path "$WORK/$1" > "$WORK/$1.log" 2>&1 \
        || { tail -40 "$WORK/$1.log"; exit 1; }
    mkdir -p "$OUT/$1" && rm -f "$OUT/$1"/results_*.json "$OUT/$1"/samples_*.jsonl
    find "$WORK/$1" -name 'results_*.json' -exec cp {} "$OUT/$1/results_shunter_mc.json" \;
    find "$WORK/$1" -name 'samples_*.jsonl' -exec cp {} "$OUT/$1/samples_shunter_mc.jsonl" \;
    grep -A4 '^|  Tasks' "$WORK/$1.log"
}
run shunter --model local-completions --model_args "model=$MODEL,base_url=http://127.0.0.1:$HTTP_PORT/v1/completions,tokenizer_backend=huggingface,tokenizer=$MODEL_DIR,num_concurrent=1,max_retries=1"
# router requests that finished, by reason (each loglikelihood is one HTTP request at batch size 1)
curl -s "http://127.0.0.1:$HTTP_PORT/metrics" | grep '^shunter:request_success_total' > "$WORK/requests.txt" || true
kill -INT $SERVER && wait $SERVER || true
trap - EXIT
run hf --model hf --model_args "pretrained=$MODEL_DIR,dtype=float32" --device cpu --batch_size 1
run hf-fp64 --model hf --model_args "pretrained=$MODEL_DIR,dtype=float64" --device cpu --batch_size 1
status=0
python3 loadtest/lm_eval/compare.py "$OUT/shunter" "$OUT/hf" --labels shunter hf --json "$OUT/compare_hf.json" \
    | tee "$OUT/compare_hf.txt" || status=${PIPESTATUS[0]}
python3 loadtest/lm_eval/compare.py "$OUT/shunter" "$OUT/hf-fp64" --labels shunter hf-fp64 \
    --json "$OUT/compare_hf_fp64.json" | tee "$OUT/compare_hf_fp64.txt" || true
python3 loadtest/lm_eval/compare.py "$OUT/hf" "$OUT/hf-fp64" --labels hf hf-fp64 \
    --json "$OUT/compare_hf_vs_fp64.json" | tee "$OUT/compare_hf_vs_fp64.txt" || true
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "shunter commit: $(git rev-parse HEAD)"
    "$LMEVAL_VENV/bin/python" -c 'import importlib.metadata as m
for p in ("lm_eval", "transformers", "torch", "datasets", "tokenizers"): print(f"{p}: {m.version(p)}")'
    echo "shunter venv torch/transformers: $("$PY" -c 'import torch, transformers; print(torch.__version__, transformers.__version__)')"
    echo "shunter router requests finished:"; sed 's/^/  /' "$WORK/requests.txt"
    echo "uptime at the start: $START_UPTIME"
    echo "uptime at the end: $(uptime)"
} | tee "$OUT/env.txt"
rm -rf "$WORK"
exit "$status"
