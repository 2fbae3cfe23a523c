"""`shunter bench offline`: the same requests through Hugging Face static `generate` and Shunter.

The baseline is what people run without a serving engine: batches of fixed size, left padding,
every batch decoding until its longest output is done. Both sides produce exactly the requested
number of tokens per request (EOS ignored), and throughput counts only those useful tokens.
`--llama-cpp` adds llama.cpp on the same GGUF, one request at a time (`llama_cpp_baseline.py`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def useful_tokens(self) -> int:
        return sum(self.output_lens)


def make_workload(n: int, vocab_size: int, seed: int, min_prompt: int, max_prompt: int, min_out: int, max_out: int) -> Workload:
    """Prompt lengths log-uniform, output lengths uniform: a mix of short and long requests."""
    rng = random.Random(seed)
    prompts, outs = [], []
    for _ in range(n):
        length = int(round(min_prompt * (max_prompt / min_prompt) ** rng.random()))
        prompts.append([rng.randrange(100, vocab_size) for _ in range(length)])
        outs.append(rng.randint(min_out, max_out))
    return Workload(prompts, outs)


def run_shunter(model: str, work: Workload, args: argparse.Namespace,
                **engine_settings) -> tuple[float, dict, list[list[int]]]:
    """Seconds for the workload, where its steps' time went (`bench_engine.StepTimes`), and each
    request's tokens."""
    llm = make_llm(model, work, args, **engine_settings)
    return timed_generate(llm, work)


def make_llm(model: str, work: Workload, args: argparse.Namespace, **engine_settings):
    """The engine, warmed up on two requests."""
    from shunter import LLM, SamplingParams

    llm = LLM(model=model, max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
              **engine_settings)
    llm.generate(work.prompts[:2], [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
                                    for n in work.output_lens[:2]], use_tqdm=False)
    return llm


def timed_generate(llm, work: Workload, logprobs: int | None = None) -> tuple[float, dict, list[list[int]]]:
    """One timed run of the workload (every request asking for `logprobs` top log-probabilities)."""
    from shunter import SamplingParams
    from shunter.loadtest.bench_engine import StepTimes, timed_steps

    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, logprobs=logprobs)
              for n in work.output_lens]
    times = StepTimes()
    with timed_steps(llm, times, []):
        start = time.perf_counter()
        outs = llm.generate(work.prompts, params, use_tqdm=sys.stderr.isatty())
        elapsed = time.perf_counter() - start
    assert [len(o.outputs[0].token_ids) for o in outs] == work.output_lens
    assert all((o.outputs[0].logprobs is not None) == (logprobs is not None) for o in outs)
    return elapsed, times.as_dict(), [list(o.outputs[0].token_ids) for o in outs]


def logprobs_cost(model: str, work: Workload, args: argparse.Namespace) -> dict:
    """The same workload with log-probabilities off and on (`args.logprobs` top tokens for every
    output token), alternating on one engine for `args.rounds` rounds (off-on, then on-off, ...),
    so that a machine that slows down or speeds up meanwhile weighs on both alike. Each run's
    CPU time (this process's, every thread) is kept too: on a machine shared with other work it
    is what the wall time would be alone, far closer than the wall time itself."""
    llm = make_llm(model, work, args)
    off, on, off_cpu, on_cpu = [], [], [], []
    for r in range(args.rounds):
        for k in ((None, args.logprobs) if r % 2 == 0 else (args.logprobs, None)):
            cpu = time.process_time()
            (off if k is None else on).append(timed_generate(llm, work, k)[0])
            (off_cpu if k is None else on_cpu).append(time.process_time() - cpu)
    off_s, on_s = sum(off), sum(on)
    return {"k": args.logprobs, "rounds": args.rounds, "off_seconds": off, "on_seconds": on,
            "off_cpu_seconds": off_cpu, "on_cpu_seconds": on_cpu,
            "off_tokens_per_s": work.useful_tokens * len(off) / off_s,
            "on_tokens_per_s": work.useful_tokens * len(on) / on_s,
            "throughput_cost": 1 - off_s / on_s, "cpu_throughput_cost": 1 - sum(off_cpu) / sum(on_cpu)}


def _llama_cpp(work: Workload, shunter_tokens: list[list[int]]) -> dict:
    """llama.cpp's run of the workload, with how many requests' tokens equal Shunter's."""
    import torch

    from shunter.loadtest.llama_cpp_baseline import run_llama_cpp
    from shunter.replica.models.smollm2 import smollm2_gguf

    gguf = smollm2_gguf()
    result = run_llama_cpp(gguf, work.prompts, work.output_lens, torch.get_num_threads())
    tokens = result.pop("token_ids")
    result["outputs_equal"] = sum(ours == theirs for ours, theirs in zip(shunter_tokens, tokens))
    result["gguf"] = gguf.name
    return result


def run_hf_static(model: str, work: Workload, batch_size: int, device: str = "cpu", dtype: str = "float32") -> float:
    """Batches of `batch_size`, left padding, each batch run to its longest output."""
    import torch
    from transformers import AutoModelForCausalLM

    from shunter.loadtest.roofline import sync
    from shunter.replica.models.loader import ensure_hf_folder

    hf = AutoModelForCausalLM.from_pretrained(ensure_hf_folder(model), dtype=getattr(torch, dtype)).to(device).eval()
    pad = 0
    with torch.inference_mode():  # warm-up: kernels and library handles load before the clock starts
        first = torch.tensor([work.prompts[0][:16]], device=device)
        hf.generate(input_ids=first, attention_mask=torch.ones_like(first), max_new_tokens=2, min_new_tokens=2,
                    do_sample=False, pad_token_id=pad, eos_token_id=None)
    sync(device)
    start = time.perf_counter()
    for b in range(0, len(work.prompts), batch_size):
        prompts = work.prompts[b : b + batch_size]
        longest = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=device)
        new = max(work.output_lens[b : b + batch_size])
        with torch.inference_mode():
            hf.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                do_sample=False, pad_token_id=pad, eos_token_id=None,
            )
    sync(device)
    return time.perf_counter() - start


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt-len", type=int, nargs=2, default=[16, 384], metavar=("MIN", "MAX"))
    parser.add_argument("--output-len", type=int, nargs=2, default=[8, 256], metavar=("MIN", "MAX"))
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--before", action="store_true",
                        help="also run Shunter as before issue 25 (inputs packed every step, no async scheduling)")
    parser.add_argument("--logprobs", type=int, default=None, metavar="K",
                        help="also measure log-probabilities (K top tokens per output token) on vs off, in this run")
    parser.add_argument("--rounds", type=int, default=2, help="with --logprobs: off/on rounds on one engine")
    parser.add_argument("--skip-hf", action="store_true", help="leave out the HF static baseline")
    parser.add_argument("--llama-cpp", action="store_true",
                        help="also run llama.cpp (llama-cpp-python) on the same GGUF, one request at a time")
    parser.add_argument("--out", type=Path, default=None, help="JSON result path (default: loadtest/results/)")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from shunter.replica.models.loader import load_model

    if args.llama_cpp:
        from shunter.loadtest.llama_cpp_baseline import available
        from shunter.replica.models.smollm2 import NAME

        if args.model != NAME:
            raise SystemExit(f"error: --llama-cpp: runs the {NAME} GGUF only, got --model {args.model}")
        if not available():
            raise SystemExit("error: --llama-cpp: llama-cpp-python is not installed (pip install llama-cpp-python; "
                             "it compiles llama.cpp)")
    vocab = load_model(args.model).config.vocab_size
    work = make_workload(args.num_requests, vocab, args.seed, *args.prompt_len, *args.output_len)
    console = Console(stderr=True)
    console.print(f"{len(work.prompts)} requests, {work.useful_tokens} output tokens, {torch.get_num_threads()} threads")
    shunter_s, per_step, shunter_tokens = run_shunter(args.model, work, args)
    before_s, before_step, _ = run_shunter(args.model, work, args, persistent_batch=False,
                                           async_scheduling=False) if args.before else (None, None, None)
    cost = logprobs_cost(args.model, work, args) if args.logprobs is not None else None
    hf_s = None if args.skip_hf else run_hf_static(args.model, work, args.hf_batch_size)
    llama = _llama_cpp(work, shunter_tokens) if args.llama_cpp else None
    result = {
        "command": args._invocation,
        "model": args.model,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "workload": {"num_requests": len(work.prompts), "useful_output_tokens": work.useful_tokens,
                     "prompt_len": args.prompt_len, "output_len": args.output_len, "seed": args.seed},
        "shunter": {"max_num_batched_tokens": args.max_num_batched_tokens, "max_num_seqs": args.max_num_seqs,
                    "seconds": shunter_s, "tokens_per_s": work.useful_tokens / shunter_s, "per_step": per_step},
        "load_average": os.getloadavg(),
    }
    if hf_s is not None:
        result["hf_static"] = {"batch_size": args.hf_batch_size, "seconds": hf_s,
                               "tokens_per_s": work.useful_tokens / hf_s}
        result["ratio"] = result["shunter"]["tokens_per_s"] / result["hf_static"]["tokens_per_s"]
    if llama is not None:
        llama["tokens_per_s"] = work.useful_tokens / llama["seconds"]
        result["llama_cpp"] = llama
        result["ratio_over_llama_cpp"] = result["shunter"]["tokens_per_s"] / llama["tokens_per_s"]
    if cost is not None:
        result["logprobs"] = cost
    if before_s is not None:
        result["shunter_before"] = {"seconds": before_s, "tokens_per_s": work.useful_tokens / before_s,
                                    "per_step": before_step}
        result["after_over_before"] = before_s / shunter_s
    table = Table(title=f"offline throughput, {args.model}")
    for col in ("system", "seconds", "output tokens/s"):
        table.add_column(col)
    if hf_s is not None:
        table.add_row(f"HF generate (static, batch {args.hf_batch_size})", f"{hf_s:.1f}",
                      f"{work.useful_tokens / hf_s:.1f}")
    if before_s is not None:
        table.add_row("Shunter before issue 25 (packed, synchronous)", f"{before_s:.1f}",
                      f"{work.useful_tokens / before_s:.1f}")
    if llama is not None:
        table.add_row(f"llama.cpp (one at a time, {llama['gguf']})", f"{llama['seconds']:.1f}",
                      f"{llama['tokens_per_s']:.1f}")
    table.add_row("Shunter (continuous batching)", f"{shunter_s:.1f}", f"{work.useful_tokens / shunter_s:.1f}")
    if cost is not None:
        table.add_row(f"Shunter, logprobs off ({args.rounds} runs)", f"{sum(cost['off_seconds']):.1f}",
                      f"{cost['off_tokens_per_s']:.1f}")
        table.add_row(f"Shunter, logprobs={args.logprobs} on ({args.rounds} runs)", f"{sum(cost['on_seconds']):.1f}",
                      f"{cost['on_tokens_per_s']:.1f}")
    Console().print(table)
    if hf_s is not None:
        Console().print(f"ratio Shunter / HF static: {result['ratio']:.2f}x")
    if llama is not None:
        Console().print(f"ratio Shunter / llama.cpp one at a time: {result['ratio_over_llama_cpp']:.2f}x "
                        f"(outputs equal to Shunter's greedy tokens: {llama['outputs_equal']} of {len(work.prompts)}; "
                        "llama.cpp computes in its quantized kernels, Shunter on the de-quantized weights)")
    if cost is not None:
        Console().print(f"log-probabilities on cost {cost['throughput_cost']:.1%} of throughput, "
                        f"{cost['cpu_throughput_cost']:.1%} in CPU time (goal: <= 5%)")
    out = args.out or RESULTS / f"bench_offline_{args.model.replace(':', '_').replace('/', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0
