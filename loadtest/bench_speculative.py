"""`shunter bench speculative`: speculative decoding (n-gram or a draft model) against plain decoding, batch 1.

An input-grounded workload (issue 27): each request gives a passage and asks to repeat it, fix
its typos, or summarise it, so the answer repeats long spans of the prompt. The requests run one
at a time (batch 1) on two engines of the same model, one plain and one with `--speculative
ngram` (or `--speculative-model`: a draft model), alternating request by request so that a
machine that slows down weighs on both alike;
greedy, so both must produce the same tokens (checked). Reported: output tokens per second of
each (wall and this process's CPU time), the speed-up (goal >= 1.5x on the CPU with SmolLM2), the
acceptance rate and tokens gained per step.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

PASSAGES = [
    "A hump yard sorts freight cars into trains. A locomotive pushes a cut of cars up a small hill, the hump, "
    "and at the crest each car is uncoupled and rolls down on its own into the track of the train it joins. "
    "Retarders along the way squeeze the wheels to slow the car, so that it meets the cars already on the "
    "track at walking speed and couples without damage. A yard master plans the order of the cuts so that "
    "every outbound train leaves with its cars in station order.",
    "Flat shunting needs no hill. A shunting engine pulls a string of cars onto a lead track and then pushes "
    "them into the sorting tracks one group at a time, stopping and reversing for every group. It is slower "
    "than hump shunting but needs less land and less equipment, which is why small yards and industrial "
    "sidings still work this way, often with a single engine and a crew of two.",
]
TASKS = ["Repeat the following text exactly, word for word.", "Fix the spelling of the following text and give it back "
         "in full.", "Summarise the following text in a few sentences, keeping its words."]


def workload(passages: int) -> list[str]:
    typo = lambda text: text.replace(" the ", " teh ").replace("which", "wich")  # noqa: E731
    asks = []
    for i in range(passages):
        text = PASSAGES[i % len(PASSAGES)]
        for task in TASKS:
            asks.append(f"{task}\n\n{typo(text) if 'spelling' in task else text}")
    return asks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--passages", type=int, default=2, help="passages; each is asked 3 ways")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--num-speculative-tokens", type=int, default=4)
    parser.add_argument("--speculative-model", default=None, metavar="MODEL",
                        help="speculate with this draft model instead of n-grams")
    parser.add_argument("--speculative-draft-layers", type=int, default=None, metavar="N",
                        help="with --speculative-model: its first N layers only")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default: loadtest/results/bench_speculative.json)")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from shunter import LLM, SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    plain = LLM(model=args.model)
    method = ({"speculative_model": args.speculative_model, "speculative_draft_layers": args.speculative_draft_layers}
              if args.speculative_model else {"speculative": "ngram"})
    spec = LLM(model=args.model, num_speculative_tokens=args.num_speculative_tokens, **method)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0)
    asks = [[{"role": "user", "content": a}] for a in workload(args.passages)]
    for llm in (plain, spec):  # warm-up
        llm.chat(asks[0], SamplingParams(max_tokens=8, temperature=0), use_tqdm=False)
    base_stats = spec.engine.speculator.stats.drafted, spec.engine.speculator.stats.accepted
    steps_before = spec.engine.scheduler.num_steps
    times = {"plain": [0.0, 0.0], "speculative": [0.0, 0.0]}
    tokens, mismatched = 0, 0
    for i, ask in enumerate(asks):
        outs = {}
        for name in (("plain", "speculative") if i % 2 == 0 else ("speculative", "plain")):
            llm = plain if name == "plain" else spec
            cpu, wall = time.process_time(), time.perf_counter()
            outs[name] = llm.chat(ask, params, use_tqdm=False)[0].outputs[0].token_ids
            times[name][0] += time.perf_counter() - wall
            times[name][1] += time.process_time() - cpu
        tokens += len(outs["plain"])
        mismatched += outs["plain"] != outs["speculative"]
    stats = spec.engine.speculator.stats
    drafted, accepted = stats.drafted - base_stats[0], stats.accepted - base_stats[1]
    steps = spec.engine.scheduler.num_steps - steps_before
    result = {
        "command": args._invocation, "model": args.model,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}",
        "load_average": os.getloadavg(), "requests": len(asks), "max_tokens": args.max_tokens,
        "method": {"speculative": spec.engine.config.speculative, "speculative_model": args.speculative_model,
                   "speculative_draft_layers": args.speculative_draft_layers},
        "num_speculative_tokens": args.num_speculative_tokens, "output_tokens": tokens,
        "outputs_differing": mismatched,
        "seconds": {k: {"wall": v[0], "cpu": v[1]} for k, v in times.items()},
        "tokens_per_s": {k: tokens / v[0] for k, v in times.items()},
        "speedup": times["plain"][0] / times["speculative"][0],
        "cpu_speedup": times["plain"][1] / times["speculative"][1],
        "drafted": drafted, "accepted": accepted, "acceptance_rate": accepted / drafted if drafted else 0.0,
        "speculative_steps": steps, "tokens_per_step": tokens / steps if steps else 0.0,
    }
    out = args.out or RESULTS / "bench_speculative.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    Console().print(
        f"{spec.engine.config.speculative}: {len(asks)} requests at batch 1, {tokens} output tokens each way: plain "
        f"{result['tokens_per_s']['plain']:.1f} tokens/s, speculative {result['tokens_per_s']['speculative']:.1f}: "
        f"speed-up {result['speedup']:.2f}x (CPU time {result['cpu_speedup']:.2f}x; goal >= 1.5x); acceptance "
        f"{result['acceptance_rate']:.0%} of {drafted} drafts, {result['tokens_per_step']:.2f} tokens a step; "
        f"outputs differing: {mismatched}; saved {out}")
    return 0 if mismatched == 0 else 1


def main(argv: list[str] | None = None) -> int:
    from shunter.loadtest.bench_cli import run_bench

    return run_bench("speculative", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
