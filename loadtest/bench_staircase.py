"""`shunter bench staircase`: the step-time staircase a replica times at start-up, at full grid.

The model runner's own start-up timing (`ModelRunner.measure_step_staircase`): one-sequence
prefill steps of 16, 32, ... `--max-tokens` tokens, the fastest of `--repeats` runs after a
warm-up each, and the tile boundaries read off them (`replica/step_staircase.py`). Writes the
times, the boundaries, the tile and what aligning saturated steps to the staircase gains over
steps of every timed size (`StepStaircase.aligned_gain`: issue 30's goal is >= 5%), with a plot.
`scripts/gpu-check.sh` runs it on a lent GPU (`random:llama-3-8b`: Mistral-7B's GEMM shapes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="random:llama-3-8b")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-tokens", type=int, default=1024, help="the largest step timed")
    parser.add_argument("--stride", type=int, default=16, help="tokens between timed sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per size after a warm-up (the fastest counts)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: loadtest/results/bench_staircase.json)")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from shunter.mathutil import cdiv
    from shunter.replica.engine_config import EngineConfig
    from shunter.replica.model_runner import ModelRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.max_tokens < args.stride or args.stride < 1:
        raise SystemExit("error: --max-tokens must be >= --stride >= 1")
    started = time.perf_counter()
    config = EngineConfig(model=args.model, device=args.device, dtype=args.dtype, enforce_eager=True,
                          num_kv_blocks=cdiv(args.max_tokens, 16) + 1, max_num_batched_tokens=args.max_tokens,
                          max_num_seqs=1, max_model_len=args.max_tokens + 16, swap_space=0)
    runner = ModelRunner.create(config)
    loaded = time.perf_counter()
    stairs = runner.measure_step_staircase(args.max_tokens, args.stride, args.repeats)
    timed = time.perf_counter() - loaded
    device = torch.cuda.get_device_name(runner.device) if runner.device.type == "cuda" else platform.processor() or "cpu"
    result = {
        "command": args._invocation, "model": args.model, "device": device, "dtype": str(runner.dtype),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "wall_s": {"load": loaded - started, "timing": timed}, **stairs.to_dict(),
        "aligned_gain": stairs.aligned_gain(),
    }
    out = args.out or RESULTS / "bench_staircase.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    Console().print(f"{args.model} on {device}: tile {stairs.tile}, boundaries {list(stairs.boundaries)}; "
                    f"aligned saturated steps gain {stairs.aligned_gain() - 1:+.1%} on average over the timed sizes "
                    f"({timed:.1f} s of timing); saved {out}")
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(result["sizes"], [s * 1e3 for s in result["seconds"]], ".-", lw=0.8)
    for b in result["boundaries"]:
        ax.axvline(b, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("tokens in the step (one sequence's prefill)")
    ax.set_ylabel("step time (ms)")
    ax.set_title(f"{result['model']} on {result['device']}: tile {result['tile']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from shunter.loadtest.bench_cli import run_bench

    return run_bench("staircase", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
