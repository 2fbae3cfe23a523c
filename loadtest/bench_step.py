"""`shunter bench step`: the host's time per engine step, with a model that costs nothing.

The real `Engine` (scheduler, KV cache manager, policy) over the real `ModelRunner` (persistent
batch, staging copy, sampler, readback) whose model returns at once (`testing/null_model.py`),
at 8, 64 and 256 running sequences with short and long contexts, in steady decode. A step's
time is split into scheduling, preparing the inputs, launching the model and sampler
(`launch`: a null forward, the logits, the sampler, the readback's start), reading the tokens
back and making the outputs (`outputs`), and the rest (counting computed tokens, publishing
full blocks, the step's bookkeeping). Each case runs every path in the same process:
`before` packs each step's inputs from scratch and steps synchronously (the engine before the
persistent batch), `persistent` uses the persistent batch synchronously, `after` adds async
scheduling (the default). `total_ms` is timed without the instruments (`cpu_ms`: the process's
CPU time over the same steps, which a busy machine inflates less), in `--blocks` blocks whose
median and fastest time a step are `median_ms` and `min_ms` (a shared machine's bursts move the
mean more than the median); the split is timed with the instruments, on the wall clock or
(`--split-clock cpu`) the process's CPU time. `gc_ms` is the garbage collector's share of
`total_ms` (`gc_longest_ms`: its longest pause). Each case's engine is built as a serving
process's only engine: its collector tuned (`replica/gc_tuning.py`).
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from shunter.cli_args import int_at_least
from shunter.loadtest.bench_cli import run_bench

RESULTS = Path(__file__).resolve().parent / "results"
PATHS = {
    "before": dict(persistent_batch=False, async_scheduling=False),
    "persistent": dict(persistent_batch=True, async_scheduling=False),
    "after": dict(persistent_batch=True, async_scheduling=True),
}
PARTS = ("schedule", "prepare", "launch", "outputs")


def build(seqs: int, context: int, steps: int, path: str, device: str):
    """A null engine with `seqs` requests of `context` prompt tokens, stepped until all decode."""
    from shunter import SamplingParams
    from shunter.mathutil import cdiv
    from shunter.replica.engine_config import EngineConfig
    from shunter.replica.gc_tuning import tune_gc_for_serving
    from shunter.testing.null_model import VOCAB, null_engine

    max_tokens = steps + 64
    max_model_len = context + max_tokens + 16
    blocks = seqs * cdiv(context + max_tokens, 16) + 16
    config = EngineConfig(model="null", device=device, num_kv_blocks=blocks, max_num_seqs=seqs,
                          max_num_batched_tokens=max(2048, seqs), **PATHS[path])
    engine = null_engine(config, max_model_len=max_model_len)
    tune_gc_for_serving(again=True)  # as a serving process's only engine (its own call tuned for the first case)
    for i in range(seqs):
        prompt = [1 + (i * 7 + j) % (VOCAB - 1) for j in range(context)]
        engine.add_request(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
    while engine.scheduler.waiting or any(r.is_prefilling for r in engine.scheduler.running):
        engine.step()
    return engine


class Split:
    """Wraps the step's parts (instance attributes) and sums their time on `clock`."""

    def __init__(self, engine, clock=time.perf_counter) -> None:
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.clock = clock
        runner = engine.runner
        self._wrap(engine.scheduler, "schedule", "schedule")
        self._wrap(runner, "_prepare", "prepare")
        self._wrap(runner, "execute", "launch", minus="prepare")
        self._wrap(engine, "_complete", "outputs")

    def _wrap(self, owner, attr: str, part: str, minus: str | None = None) -> None:
        inner = getattr(owner, attr)
        seconds, clock = self.seconds, self.clock

        def timed(*args, **kwargs):
            before = seconds[minus] if minus else 0.0
            started = clock()
            try:
                return inner(*args, **kwargs)
            finally:
                spent = clock() - started
                seconds[part] += spent - ((seconds[minus] - before) if minus else 0.0)

        setattr(owner, attr, timed)


def measure(seqs: int, context: int, steps: int, path: str, device: str, cpu_clock: bool = False,
            blocks: int = 10) -> dict[str, float]:
    from shunter.loadtest.roofline import sync

    engine = build(seqs, context, 2 * steps + 20, path, device)
    for _ in range(10):  # warm-up
        engine.step()
    sync(device)
    collections = GCTimer()
    blocks = min(blocks, steps)
    per_block = [steps // blocks + (b < steps % blocks) for b in range(blocks)]
    block_ms = []  # each block's wall time a step: their median leaves out a noisy machine's bursts
    started, cpu_started = time.perf_counter(), time.process_time()
    with collections:
        for n in per_block:
            block_started = time.perf_counter()
            for _ in range(n):
                engine.step()
            block_ms.append(1e3 * (time.perf_counter() - block_started) / n)
        sync(device)
    total = (time.perf_counter() - started) / steps
    cpu = (time.process_time() - cpu_started) / steps
    clock = time.process_time if cpu_clock else time.perf_counter
    split = Split(engine, clock)
    started = clock()
    for _ in range(steps):
        engine.step()
    sync(device)
    instrumented = (clock() - started) / steps
    parts = {k: 1e3 * v / steps for k, v in split.seconds.items()}
    parts["rest"] = 1e3 * instrumented - sum(parts.values())
    return {"total_ms": 1e3 * total, "median_ms": statistics.median(block_ms), "min_ms": min(block_ms),
            "cpu_ms": 1e3 * cpu, **{f"{k}_ms": v for k, v in parts.items()},
            "instrumented_ms": 1e3 * instrumented, "gc_ms": 1e3 * collections.seconds / steps,
            "gc_longest_ms": 1e3 * collections.longest}


class GCTimer:
    """The garbage collector's time while it is entered (`gc.callbacks`): the split's parts
    include whatever collection lands in them; this says how much of `total` it was."""

    def __init__(self) -> None:
        self.seconds = self.longest = 0.0
        self._started = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            spent = time.perf_counter() - self._started
            self.seconds += spent
            self.longest = max(self.longest, spent)

    def __enter__(self) -> GCTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._callback)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seqs", type=int, nargs="+", default=[8, 64, 256], help="running sequences")
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 2048], help="prompt tokens per sequence")
    parser.add_argument("--steps", type=int, default=200, help="timed decode steps per case (twice: plain, split)")
    parser.add_argument("--blocks", type=int_at_least(1), default=10,
                        help="the timed steps run in this many blocks; `median` is their median time a step")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--device", default="cpu", help="where the null model's tensors live (cpu or cuda)")
    parser.add_argument("--split-clock", choices=["wall", "cpu"], default="wall",
                        help="what the split is timed on: wall time (a GPU: the wait for the device counts), or "
                             "the process's CPU time (a busy CPU-only machine)")
    parser.add_argument("--out", type=Path, default=None, help="JSON result path (default: loadtest/results/)")


def run(args: argparse.Namespace) -> int:
    import os

    import torch
    from rich.console import Console
    from rich.table import Table

    torch.set_num_threads(1)  # the host's own work; torch ops here are tiny
    cases = []
    for seqs in args.seqs:
        for context in args.contexts:
            case = {"seqs": seqs, "context": context}
            for path in args.paths:
                case[path] = measure(seqs, context, args.steps, path, args.device, args.split_clock == "cpu",
                                     args.blocks)
            if "before" in case and "after" in case:
                case["before_over_after"] = case["before"]["total_ms"] / case["after"]["total_ms"]
            cases.append(case)
            Console(stderr=True).print(f"{seqs} seqs, {context} tokens: " + ", ".join(
                f"{p} {case[p]['total_ms']:.3f} ms (median {case[p]['median_ms']:.3f})" for p in args.paths))
    result = {"command": args._invocation, "device": args.device, "split_clock": args.split_clock,
              "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
              "load_average": os.getloadavg(), "steps": args.steps, "cases": cases}
    # Narrow enough for 80 columns (a log, a pipe); CPU time and the longest collector pause are in the JSON.
    table = Table(title=f"host time per decode step (ms), null model on {args.device}", box=None, padding=(0, 1),
                  pad_edge=False)
    for col in ("seqs", "ctx", "path", "total", "median", "sched", "prep", "launch", "out", "rest", "gc"):
        table.add_column(col, no_wrap=True)
    for case in cases:
        for path in args.paths:
            m = case[path]
            table.add_row(str(case["seqs"]), str(case["context"]), path,
                          *(f"{m[f'{k}_ms']:.3f}" for k in ("total", "median", *PARTS, "rest", "gc")))
    Console().print(table)
    out = args.out or RESULTS / f"bench_step_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    Console(stderr=True).print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_bench("step", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
