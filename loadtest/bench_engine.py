"""`shunter bench engine`: offline throughput on ShareGPT-like lengths against Hugging Face static
`generate`, Hugging Face's own continuous batching (`generate_batch`'s manager) and the roofline.

Prompt and output lengths are log-normal (medians ~200 and ~250 tokens, capped), random token
ids, EOS ignored: every system makes exactly the requested tokens, and throughput counts only
those. The roofline replays the schedule Shunter actually ran (see `roofline.py`), with peak
FLOP/s and copy bandwidth measured on the same device in the same run. Made for the GPU
(`random:llama-3.2-1b` in bfloat16); it runs anywhere with small settings.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from shunter.loadtest.bench_cli import run_bench
from shunter.loadtest.bench_offline import Workload, run_hf_static
from shunter.loadtest.hf_continuous import run_hf_continuous
from shunter.loadtest.roofline import (
    ChunkShape,
    ModelCost,
    bound_seconds,
    is_cuda,
    measure_bandwidth,
    measure_peak_flops,
    release_memory,
    sync,
)

RESULTS = Path(__file__).resolve().parent / "results"


def lognormal_workload(n: int, vocab_size: int, seed: int, input_median: int, output_median: int, sigma: float,
                       cap: int) -> Workload:
    rng = random.Random(seed)

    def length(median: int) -> int:
        return max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma))))

    prompts, outs = [], []
    for _ in range(n):
        prompts.append([rng.randrange(100, vocab_size) for _ in range(length(input_median))])
        outs.append(length(output_median))
    return Workload(prompts, outs)


def make_llm(args: argparse.Namespace):
    from shunter import LLM

    return LLM(model=args.model, device=args.device, max_num_batched_tokens=args.max_num_batched_tokens,
               max_num_seqs=args.max_num_seqs, async_scheduling=False if args.no_async_scheduling else None)


@dataclass
class StepTimes:
    """Where each engine step's wall time goes. `prepare`: the runner brings the persistent batch
    up to date, gathers the step's inputs and starts their copy up; `launch`: the rest of the
    runner's `execute`, launching the forward (or replaying a decode graph) and the sampler and
    starting the tokens' copy back; `outputs`: the engine waits for the tokens (the step's sync)
    and makes the outputs; the rest is scheduling and bookkeeping. With async scheduling a step
    waits for the one before it, launched earlier, so the wait in `outputs` is the device's time
    the host did not cover. On the first H100 run a step took 5.9 ms against a 1.6 ms roofline;
    these tell the next run whether the host or the device holds the difference."""

    steps: int = 0
    step_s: float = 0.0
    prepare_s: float = 0.0
    launch_s: float = 0.0
    outputs_s: float = 0.0
    graph_steps: int = 0  # decode steps replayed from a CUDA graph
    waits: int = 0  # readbacks waited for: one a step
    implicit_syncs: int = 0  # other syncs CUDA's sync debug mode saw (.item(), copies to pageable memory...)
    device: dict[str, float | int] = field(default_factory=dict)  # `DeviceTimeline.summary()` on CUDA

    def as_dict(self) -> dict[str, float | int]:
        n = max(self.steps, 1)
        return {"steps": self.steps, "step_ms": 1e3 * self.step_s / n, "prepare_ms": 1e3 * self.prepare_s / n,
                "launch_ms": 1e3 * self.launch_s / n, "outputs_ms": 1e3 * self.outputs_s / n,
                "rest_ms": 1e3 * (self.step_s - self.prepare_s - self.launch_s - self.outputs_s) / n,
                "decode_graph_steps": self.graph_steps, "syncs_per_step": (self.waits + self.implicit_syncs) / n,
                "implicit_syncs": self.implicit_syncs, **self.device}


@contextmanager
def timed_steps(llm, times: StepTimes, shapes: list[list[ChunkShape]]):
    """Wrap the engine's step and output handling and the runner's execute, input preparation and
    decode graphs (instance attributes, removed after), recording each step's shape and times;
    on CUDA also the device's timeline and CUDA's own count of implicit syncs."""
    import warnings

    import torch

    engine, runner = llm.engine, llm.engine.runner
    graphs = runner.decode_graphs
    originals = {(engine, "step"): engine.step, (engine, "_complete"): engine._complete,
                 (runner, "execute"): runner.execute, (runner, "_prepare"): runner._prepare}
    if graphs is not None:
        originals[(graphs, "run")] = graphs.run
    waits = runner.readback.waits

    def timed(owner, name: str, field_name: str, before=None):
        inner = originals[(owner, name)]

        def wrapper(*args, **kwargs):
            if before is not None:
                before(*args)
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                setattr(times, field_name, getattr(times, field_name) + time.perf_counter() - started)
        return wrapper

    def execute_shape(out):
        shapes.append([ChunkShape(s.start, s.num_new_tokens, s.samples) for s in out.scheduled])
        times.steps += 1

    engine.step = timed(engine, "step", "step_s")
    engine._complete = timed(engine, "_complete", "outputs_s")
    runner.execute = timed(runner, "execute", "launch_s", execute_shape)
    runner._prepare = timed(runner, "_prepare", "prepare_s")
    if graphs is not None:
        replay = originals[(graphs, "run")]

        def counted_replay(batch):
            times.graph_steps += 1
            return replay(batch)

        graphs.run = counted_replay
    cuda = runner.device.type == "cuda"
    if cuda:
        from shunter.replica.device_timeline import DeviceTimeline

        runner.timeline = DeviceTimeline()
        torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        times.implicit_syncs = sum("synchroniz" in str(w.message) for w in caught)
    finally:
        for owner, name in originals:
            delattr(owner, name)
        times.launch_s -= times.prepare_s  # execute's time includes prepare's
        times.waits = runner.readback.waits - waits
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
            times.device = runner.timeline.summary()
            runner.timeline = None


def run_shunter(llm, work: Workload, args: argparse.Namespace) -> tuple[float, list[list[ChunkShape]], int, StepTimes]:
    """Seconds for the whole workload, the shape of every step it ran, how many Triton kernel
    variants compiled inside the timing (0 when the warm-up covered them all), and where the
    steps' time went."""
    from shunter import SamplingParams
    from shunter.kernels import ops as kernels

    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in work.output_lens]
    llm.generate(work.prompts[:2], params[:2], use_tqdm=False)  # warm-up (kernels compile here)
    graphs = llm.engine.runner.decode_graphs
    if graphs is not None and graphs.capture:  # a server captures each size when first used; a bench not in its timing
        graphs.capture_all()
    steps: list[list[ChunkShape]] = []
    times = StepTimes()
    compiled = kernels.compiled_variants()
    sync(args.device)
    with timed_steps(llm, times, steps):
        start = time.perf_counter()
        outs = llm.generate(work.prompts, params, use_tqdm=sys.stderr.isatty())
        elapsed = time.perf_counter() - start  # the last step's tokens are read back: the device is done
    assert [len(o.outputs[0].token_ids) for o in outs] == work.output_lens
    return elapsed, steps, kernels.compiled_variants() - compiled, times


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="random:llama-3.2-1b")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-median", type=int, default=200)
    parser.add_argument("--output-median", type=int, default=250)
    parser.add_argument("--sigma", type=float, default=0.8, help="log-normal sigma of both lengths")
    parser.add_argument("--cap", type=int, default=2048, help="longest prompt and longest output")
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--hf-batch-size", type=int, default=64)
    parser.add_argument("--static-requests", type=int, default=256,
                        help="HF static generate runs on the first N requests (it is slow); tokens/s compared")
    parser.add_argument("--continuous-requests", type=int, default=None,
                        help="HF continuous batching runs on the first N requests (default: all); tokens/s compared")
    parser.add_argument("--skip-hf-continuous", action="store_true")
    parser.add_argument("--no-async-scheduling", action="store_true",
                        help="step synchronously (the next step scheduled only once this one's tokens are back)")
    parser.add_argument("--out", type=Path, default=None, help="JSON result path (default: loadtest/results/)")


def run(args: argparse.Namespace) -> int:
    """Each phase prints its time and rewrites the JSON as it ends, so a run cut off by a timeout
    (the GPU check's budget) still leaves every number measured before the cut."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from shunter.replica.models.loader import ensure_hf_folder

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = "bfloat16" if is_cuda(args.device) else "float32"
    console = Console(stderr=True)
    out = args.out or RESULTS / f"bench_engine_{args.model.replace(':', '_').replace('/', '_')}_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    llm = make_llm(args)
    model_config, dtype = llm.engine.runner.config, llm.engine.runner.dtype
    work = lognormal_workload(args.num_requests, model_config.vocab_size, args.seed, args.input_median,
                              args.output_median, args.sigma, args.cap)
    subset = Workload(work.prompts[: args.static_requests], work.output_lens[: args.static_requests])
    continuous = Workload(work.prompts[: args.continuous_requests], work.output_lens[: args.continuous_requests])
    console.print(f"{len(work.prompts)} requests, {sum(map(len, work.prompts))} prompt and {work.useful_tokens} "
                  f"output tokens, {args.model} on {args.device} ({args.dtype})")
    device_name = torch.cuda.get_device_name(args.device) if is_cuda(args.device) else "cpu"
    result = {
        "command": args._invocation,
        "model": args.model, "device": device_name, "dtype": args.dtype, "torch": torch.__version__,
        "workload": {"num_requests": len(work.prompts), "prompt_tokens": sum(map(len, work.prompts)),
                     "useful_output_tokens": work.useful_tokens, "input_median": args.input_median,
                     "output_median": args.output_median, "sigma": args.sigma, "cap": args.cap, "seed": args.seed},
        "measured": {}, "seconds": {},
        "hf_static_requests": len(subset.prompts), "hf_batch_size": args.hf_batch_size,
        "hf_continuous_requests": len(continuous.prompts),
        "shunter_budget": {"max_num_batched_tokens": args.max_num_batched_tokens, "max_num_seqs": args.max_num_seqs},
        "hf_continuous_budget": None, "output_tokens_per_s": {}, "ratios": {},
    }
    tokens = {"shunter": work.useful_tokens, "roofline": work.useful_tokens, "hf_static": subset.useful_tokens,
              "hf_continuous": continuous.useful_tokens}

    def record(name: str, seconds: float) -> None:
        result["seconds"][name] = seconds
        rate = result["output_tokens_per_s"]
        rate[name] = tokens[name] / seconds
        console.print(f"{name}: {seconds:.2f} s, {rate[name]:.1f} output tokens/s")
        if "shunter" in rate:
            for other in rate.keys() - {"shunter"}:
                result["ratios"][f"shunter_over_{other}"] = rate["shunter"] / rate[other]
        out.write_text(json.dumps(result, indent=2) + "\n")

    shunter_s, steps, compiled_in_run, times = run_shunter(llm, work, args)
    result["measured"].update(steps=len(steps), kernel_variants_compiled_in_timed_run=compiled_in_run,
                              per_step=times.as_dict())
    console.print("per step: " + ", ".join(f"{k} {v:.3g}" for k, v in times.as_dict().items()))
    record("shunter", shunter_s)
    del llm  # its KV pool holds most of the device: free it for the baselines
    release_memory(args.device)
    peak, bandwidth = measure_peak_flops(args.device, dtype), measure_bandwidth(args.device)
    result["measured"].update(peak_tflops=peak / 1e12, copy_bandwidth_gbs=bandwidth / 1e9)
    cost = ModelCost.of(model_config, torch.tensor([], dtype=dtype).element_size())
    record("roofline", bound_seconds(cost, steps, peak, bandwidth))
    record("hf_static", run_hf_static(args.model, subset, args.hf_batch_size, args.device, args.dtype))
    if not args.skip_hf_continuous:
        continuous_s, result["hf_continuous_budget"] = run_hf_continuous(
            continuous, ensure_hf_folder(args.model), args.device, args.dtype, args.max_num_batched_tokens,
            args.max_num_seqs)
        record("hf_continuous", continuous_s)
    rate = result["output_tokens_per_s"]
    table = Table(title=f"offline throughput, {args.model} on {device_name}")
    for col in ("system", "output tokens/s", "Shunter is"):
        table.add_column(col)
    for name, label in (("roofline", "roofline bound (same schedule)"), ("shunter", "Shunter"),
                        ("hf_continuous", "HF continuous batching (paged|sdpa)"),
                        ("hf_static", f"HF static generate (batch {args.hf_batch_size})")):
        if name in rate:
            table.add_row(label, f"{rate[name]:.1f}", f"{rate['shunter'] / rate[name]:.2f}x")
    Console().print(table)
    console.print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_bench("engine", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
