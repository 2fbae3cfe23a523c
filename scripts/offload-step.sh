#!/usr/bin/env bash
# The CPU tier's write-through copies and the engine step, this tree against a git revision:
# scripts/offload-step.sh REV [ROUNDS]
#
# SmolLM2 (on a GPU where there is one; 2 torch threads), a 1 GiB CPU tier: each round reads a fresh
# 1,000-token prompt (63 full blocks) and decodes 12 tokens; the step after the prefill starts
# the copies of its 63 blocks. Prints, for each tree, the medians over ROUNDS (default 8) of the
# engine thread's time in the copies (`ModelRunner.offload`; before 6c37f52 the swap call that
# made them), that step's time, and a decode step's; the two trees run
# twice, alternating. REV is checked out into a temporary worktree; needs the README's .venv.
set -euo pipefail
rev=${1:?usage: scripts/offload-step.sh REV [ROUNDS]}
rounds=${2:-8}
root=$(cd "$(dirname "$0")/.." && pwd)
python=$root/.venv/bin/python
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add --detach "$work/base" "$rev" >/dev/null 2>&1
cat > "$work/rounds.py" <<'PY'
import statistics, sys, time
import torch
from shunter import LLM, SamplingParams
from shunter.replica.model_runner import ModelRunner
torch.set_num_threads(2)
spent = []
def timed(f):
    def g(*a, **k):
        t = time.perf_counter(); r = f(*a, **k); spent.append(time.perf_counter() - t); return r
    return g
if hasattr(ModelRunner, "offload"):  # the copies beside the step (a GPU's, or 6c37f52's everywhere) or in it
    ModelRunner.offload = timed(ModelRunner.offload)
else:  # before 6c37f52: the copies in the step, with its swap-outs
    swap = ModelRunner.swap
    ModelRunner.swap = lambda self, pairs, to_cpu: (timed(swap) if to_cpu and pairs else swap)(self, pairs, to_cpu)
llm = LLM(model="smollm2-135m-instruct", num_kv_blocks=400, max_model_len=1200, cpu_kv_gib=1.0,
          max_num_batched_tokens=1024)
where = "beside the step" if getattr(llm.engine.runner, "offloader", None) is not None else "in the step"
engine, rows = llm.engine, []
for r in range(int(sys.argv[1])):
    words = " ".join(f"Wagon {r}-{i} waits on siding {(i * 7 + r) % 13}." for i in range(1024))
    engine.add_request(f"r{r}", list(llm.tokenizer(words).input_ids[:1000]),
                       SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    times, spent[:] = [], []
    while engine.has_unfinished_requests():
        t = time.perf_counter(); engine.step(); times.append(time.perf_counter() - t)
    rows.append((sum(spent), times[1], statistics.median(times[3:])))
ms = [statistics.median(x[i] for x in rows) * 1e3 for i in range(3)]
print(f"{sys.argv[2]} ({where}): engine thread in the copies {ms[0]:.2f} ms; the step that starts them "
      f"{ms[1]:.1f} ms, a decode step {ms[2]:.1f} ms (medians of {len(rows)} rounds of 63 blocks)")
PY
for _ in 1 2; do
    (cd "$work" && PYTHONPATH=$work/base "$python" rounds.py "$rounds" "$rev") 2>/dev/null | tail -1
    (cd "$work" && PYTHONPATH=$root "$python" rounds.py "$rounds" "this tree") 2>/dev/null | tail -1
done
