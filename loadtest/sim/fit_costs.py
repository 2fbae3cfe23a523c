"""Measure the real engine's step times and fit a linear cost model to them.

    python -m shunter.loadtest.sim.fit_costs --model smollm2-135m-instruct --device cpu --threads 1 \\
        --out loadtest/sim/costs/smollm2_cpu.json          # (a): SmolLM2 on this CPU
    python -m shunter.loadtest.sim.fit_costs --model random:llama-3-8b --device cuda \\
        --out loadtest/sim/costs/h100_llama-3-8b_fitted.json  # (c): on a GPU, when one is lent

The real `Engine` runs three kinds of step: prefills of growing length alone; decodes of growing
batches at a few context lengths (the batch shares its prompt through the prefix cache, so only
one prefill is paid per context); and decodes with a prefill chunk beside them. Each step's wall
time (the whole `Engine.step()`, scheduling included: that is what a simulated step stands for)
is recorded with its `StepShape`. The whole plan runs `--reps` times with other token values (so
nothing is served from an earlier repetition's cache and every repetition schedules the same
shapes); each step keeps its fastest repetition, which filters out the time other processes took
the CPU. A linear model over the shape's features is then fitted by least squares on relative
error, dropping features whose weight comes out negative. Every fifth step is held out and the
model's mean error on it is reported. The swap price is the runner's
own start-up measurement. The JSON written is a `costs.load_cost_model` file with the samples.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shunter.loadtest.sim.costs import FEATURES, SHAPE_FIELDS, LinearCost, mean_abs_rel_error
from shunter.loadtest.sim.step_timing import Sample, time_steps

DEFAULTS = {  # (prefill lengths, decode batch sizes, contexts, token budget, KV blocks) per device
    "cpu": ([16, 32, 64, 128, 256, 384, 512], [1, 2, 4, 8, 16, 32], [32, 256, 768], 512, 512),
    "cuda": ([64, 256, 512, 1024, 2048, 4096, 8192], [1, 4, 16, 32, 64, 128, 256], [128, 1024, 4096], 8192, 4096),
}


class StepTimer:
    """Runs engine steps, recording each one's shape and wall time (`step_timing.time_steps`);
    steps taken outside `run` are not recorded."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.samples, self._recording = engine, [], False
        time_steps(engine, lambda shape, seconds: self._recording and self.samples.append((shape, seconds)))

    def run(self, record: bool = True) -> None:
        """Step until the engine is idle."""
        self._recording = record
        try:
            while self.engine.has_unfinished_requests():
                self.engine.step()
        finally:
            self._recording = False


def scenarios(timer: StepTimer, prefills: list[int], batches: list[int], contexts: list[int], vocab: int,
              record: bool = True, salt: int = 0) -> None:
    from shunter.sampling_params import SamplingParams

    engine, serial = timer.engine, [0]

    def tokens(n: int, seed: int) -> list[int]:
        return [((seed + 1_000_003 * salt) * 7919 + i * 104_729) % (vocab - 20) + 10 for i in range(n)]

    def add(prompt: list[int], max_tokens: int) -> None:
        serial[0] += 1
        engine.add_request(f"m{serial[0]}", prompt, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))

    for n in prefills:  # prefill alone (one token out)
        add(tokens(n, serial[0] + 1), 1)
        timer.run(record)
    for context in contexts:  # decode batches: a shared prompt (prefilled once, then cached), one own token each
        shared = tokens(context - 1, 10_000 + context)
        add(shared + [9], 1)
        timer.run(record)
        for b in batches:
            for j in range(b):
                add(shared + [10 + (j + 1000 * salt) % (vocab - 20)], 8)
            timer.run(record)
    for b in batches[:4]:  # decodes with a prefill chunk beside them
        for j in range(b):
            add(tokens(64, 20_000 + 100 * b + j), 12)
        engine.step()
        engine.step()
        add(tokens(max(prefills), 30_000 + b), 2)
        timer.run(record)


def fastest(runs: list[list[Sample]]) -> list[Sample]:
    """Per step, the fastest of the repetitions (which schedule the same shapes)."""
    shapes = [[shape for shape, _ in run] for run in runs]
    if any(s != shapes[0] for s in shapes):
        raise RuntimeError("repetitions scheduled different steps; cannot pair them")
    return [(shape, min(run[i][1] for run in runs)) for i, (shape, _) in enumerate(runs[0])]


def fit(samples: list[Sample]) -> dict[str, float]:
    """Least squares on relative error over the features that vary, refitted without any whose
    weight comes out negative (a step never gets faster by doing more: with the token count in
    segments, every segment's slope stays >= 0), the most negative first."""
    import numpy as np

    x = np.array([s.features() for s, _ in samples], dtype=float)
    y = np.array([t for _, t in samples], dtype=float)
    keep = [i for i in range(x.shape[1]) if i == 0 or np.ptp(x[:, i]) > 0]
    while True:
        w, *_ = np.linalg.lstsq(x[:, keep] / y[:, None], np.ones_like(y), rcond=None)
        negative = [(wk, k) for k, wk in zip(keep, w) if wk < 0 and k != 0]
        if not negative:
            return {FEATURES[k]: float(wk) for k, wk in zip(keep, w)}
        keep.remove(min(negative)[1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None, help="default: 512 on cpu, 8192 on cuda")
    parser.add_argument("--num-kv-blocks", type=int, default=None, help="default: 512 on cpu, 4096 on cuda")
    parser.add_argument("--prefill-sizes", type=int, nargs="+")
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--contexts", type=int, nargs="+")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the plan; each step keeps its fastest")
    parser.add_argument("--out", type=Path, required=True)


def run(args: argparse.Namespace) -> int:
    import torch

    from shunter.replica.engine import Engine
    from shunter.replica.engine_config import EngineConfig
    from shunter.replica.models.kv_layout import kv_bytes_per_block

    torch.set_num_threads(args.threads)
    prefills, batches, contexts, budget, blocks = DEFAULTS[args.device]
    prefills, batches, contexts = args.prefill_sizes or prefills, args.batch_sizes or batches, args.contexts or contexts
    config = EngineConfig(model=args.model, device=args.device, num_kv_blocks=args.num_kv_blocks or blocks,
                          max_num_batched_tokens=args.max_num_batched_tokens or budget, max_num_seqs=max(batches) + 4,
                          preemption_mode="auto", swap_space=0.05, seed=0)
    engine = Engine(config)
    timer = StepTimer(engine)
    vocab = engine.runner.config.vocab_size
    scenarios(timer, prefills[:2], batches[:2], contexts[:1], vocab, record=False, salt=99)  # warm-up
    started = time.perf_counter()
    runs = []
    for rep in range(args.reps):
        timer.samples = []
        scenarios(timer, prefills, batches, contexts, vocab, salt=rep + 1)
        runs.append(timer.samples)
    measured_s = time.perf_counter() - started
    samples = fastest(runs)
    held_out, train = samples[::5], [s for i, s in enumerate(samples) if i % 5]
    coefficients = fit(train)
    swap_per_block = engine.scheduler.costs.swap_s_per_block
    coefficients["swap_tokens"] = swap_per_block / config.block_size
    model = LinearCost(coefficients)
    cfg = engine.runner.config
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    where = f"{device}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    result = {
        "name": f"{args.model}, {engine.runner.dtype}, {args.device} ({where}): fitted",
        "kind": "linear",
        "source": (f"measured on {datetime.date.today()} ({where}) by `python -m shunter.loadtest.sim.fit_costs "
                   f"--model {args.model} --device {args.device} --threads {args.threads} --reps {args.reps} --out {args.out}`: "
                   f"{len(samples)} real Engine.step() wall times (prefills alone, decode batches at contexts "
                   f"{contexts}, decodes beside a prefill chunk), each the fastest of {args.reps} repetitions, "
                   f"{measured_s:.0f} s in all; weighted least squares on relative "
                   f"error over {len(train)} steps; swap price from the runner's start-up measurement."),
        "coefficients": coefficients,
        "fit": {"held_out_steps": len(held_out), "held_out_mean_abs_rel_error": mean_abs_rel_error(model, held_out),
                "train_mean_abs_rel_error": mean_abs_rel_error(model, train)},
        "model": {"name": args.model, "vocab_size": cfg.vocab_size, "max_model_len": engine.max_model_len,
                  "kv_bytes_per_token": kv_bytes_per_block(cfg, config.block_size, engine.runner.dtype) // config.block_size,
                  "eos_token_ids": list(cfg.eos_token_ids)},
        "engine": {k: v for k, v in asdict(config).items() if k in ("max_num_batched_tokens", "num_kv_blocks", "block_size")},
        "sample_fields": [*SHAPE_FIELDS, "seconds"],
        "samples": [[*(getattr(s, f) for f in SHAPE_FIELDS), t] for s, t in samples],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("coefficients", "fit")}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shunter.loadtest.sim.fit_costs", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
