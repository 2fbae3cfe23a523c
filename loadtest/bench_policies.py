"""`shunter bench policies`: one mixed stream of short and long requests under each policy.

Short requests (short prompt, few tokens, `interactive`) and long ones (long prompt, many
tokens, `batch`) arrive as a seeded Poisson stream: each is added to the engine when the wall
clock reaches its arrival, and its latency is counted from that arrival to its last token. The
stream, the seats, the token budget and the (deliberately small) KV pool are the same for every
policy, so the table shows only what the policy changes: who waits, who is preempted.
Greedy decoding with EOS ignored makes every policy produce the same tokens, checked at the end.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shunter.mathutil import percentile

RESULTS = Path(__file__).resolve().parent / "results"
ALL_POLICIES = ["fcfs", "sjf", "mlq", "priority", "slo", "static"]


@dataclass
class Job:
    request_id: str
    kind: str  # "short" | "long"
    prompt: list[int]
    max_tokens: int
    arrival_s: float  # offset from the start of the run


@dataclass
class JobResult:
    kind: str
    latency_s: float
    ttft_s: float
    tokens: list[int] = field(repr=False)


def make_jobs(args: argparse.Namespace, vocab_size: int) -> list[Job]:
    """`--num-requests` jobs, a `--long-fraction` of them long, Poisson arrivals at `--rate`/s."""
    rng = random.Random(args.seed)
    jobs, t = [], 0.0
    for i in range(args.num_requests):
        t += rng.expovariate(args.rate)
        long = rng.random() < args.long_fraction
        lo, hi = args.long_prompt if long else args.short_prompt
        out_lo, out_hi = args.long_output if long else args.short_output
        prompt = [rng.randrange(100, vocab_size) for _ in range(rng.randint(lo, hi))]
        jobs.append(Job(f"{'long' if long else 'short'}-{i}", "long" if long else "short", prompt, rng.randint(out_lo, out_hi), t))
    return jobs


def run_policy(policy: str, jobs: list[Job], args: argparse.Namespace) -> tuple[dict[str, JobResult], dict[str, Any]]:
    """Feed the stream to a fresh engine under `policy`; per-request results and engine stats."""
    from shunter import LLM, SamplingParams
    from shunter.replica.output_collector import OutputCollector

    llm = LLM(
        model=args.model, policy=policy, max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        num_kv_blocks=args.num_kv_blocks, preemption_mode=args.preemption_mode, swap_space=args.swap_space,
    )
    llm.generate([jobs[0].prompt[:8]], SamplingParams(max_tokens=2, temperature=0.0), use_tqdm=False)  # warm-up
    engine = llm.engine
    base_stats = engine.stats()
    pending = sorted(jobs, key=lambda j: j.arrival_s)
    kinds = {j.request_id: j.kind for j in jobs}
    results: dict[str, JobResult] = {}
    collector = OutputCollector()
    start = time.monotonic()
    while pending or engine.has_unfinished_requests():
        now = time.monotonic()
        while pending and start + pending[0].arrival_s <= now:
            job = pending.pop(0)
            params = SamplingParams(
                max_tokens=job.max_tokens, temperature=0.0, ignore_eos=True,
                priority="interactive" if job.kind == "short" else "batch",
            )
            engine.add_request(job.request_id, job.prompt, params, arrival_time=start + job.arrival_s)
        if not engine.has_unfinished_requests():
            time.sleep(max(start + pending[0].arrival_s - time.monotonic(), 0.0))
            continue
        for out in collector.fold(engine.step()):
            done = time.monotonic()
            arrival = out.metrics.arrival_time
            first = out.metrics.first_token_time or done
            results[out.request_id] = JobResult(kinds[out.request_id], done - arrival, first - arrival, out.outputs[0].token_ids)
    makespan = time.monotonic() - start
    stats = engine.stats()
    sched = engine.scheduler.stats
    summary = {
        "makespan_s": makespan,
        "preemptions": stats.num_preemptions - base_stats.num_preemptions,
        "priority_preemptions": sched.num_priority_preemptions,
        "swaps": stats.num_swaps - base_stats.num_swaps,
        "recomputed_tokens": stats.num_recomputed_tokens - base_stats.num_recomputed_tokens,
        "steps": stats.num_steps - base_stats.num_steps,
    }
    return results, summary


def latency_summary(results: dict[str, JobResult], kind: str) -> dict[str, float]:
    lat = [r.latency_s for r in results.values() if r.kind == kind]
    ttft = [r.ttft_s for r in results.values() if r.kind == kind]
    return {
        "n": len(lat), "mean_s": sum(lat) / len(lat) if lat else float("nan"),
        "p50_s": percentile(lat, 0.5), "p99_s": percentile(lat, 0.99), "ttft_p50_s": percentile(ttft, 0.5),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--policies", nargs="+", default=ALL_POLICIES, choices=ALL_POLICIES)
    parser.add_argument("--num-requests", type=int, default=24)
    parser.add_argument("--long-fraction", type=float, default=0.25)
    parser.add_argument("--rate", type=float, default=4.0, help="Poisson arrivals per second")
    parser.add_argument("--short-prompt", type=int, nargs=2, default=[8, 32], metavar=("MIN", "MAX"))
    parser.add_argument("--long-prompt", type=int, nargs=2, default=[160, 256], metavar=("MIN", "MAX"))
    parser.add_argument("--short-output", type=int, nargs=2, default=[8, 16], metavar=("MIN", "MAX"))
    parser.add_argument("--long-output", type=int, nargs=2, default=[24, 40], metavar=("MIN", "MAX"))
    parser.add_argument("--max-num-seqs", type=int, default=4)
    parser.add_argument("--max-num-batched-tokens", type=int, default=128)
    parser.add_argument("--num-kv-blocks", type=int, default=40, help="small on purpose, so preemption happens")
    parser.add_argument("--preemption-mode", default="auto", choices=["recompute", "swap", "auto"])
    parser.add_argument("--swap-space", type=float, default=0.05, help="GiB of CPU swap")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is steadier on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: loadtest/results/bench_policies.json)")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from shunter.replica.models.loader import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    jobs = make_jobs(args, load_model(args.model).config.vocab_size)
    console.print(f"{len(jobs)} requests ({sum(j.kind == 'long' for j in jobs)} long), arrivals over "
                  f"{jobs[-1].arrival_s:.1f} s, {torch.get_num_threads()} threads")
    rows: dict[str, dict[str, Any]] = {}
    tokens: dict[str, dict[str, list[int]]] = {}
    for policy in args.policies:
        results, summary = run_policy(policy, jobs, args)
        tokens[policy] = {rid: r.tokens for rid, r in results.items()}
        rows[policy] = {"short": latency_summary(results, "short"), "long": latency_summary(results, "long"), **summary}
        console.print(f"{policy}: done in {summary['makespan_s']:.1f} s")
    reference = tokens[args.policies[0]]
    same_tokens = all(t == reference for t in tokens.values())
    print_table(rows, args, same_tokens)
    out = args.out or RESULTS / "bench_policies.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": args._invocation,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")},
        "jobs": [{k: v for k, v in asdict(j).items() if k != "prompt"} | {"prompt_len": len(j.prompt)} for j in jobs],
        "same_tokens_under_every_policy": same_tokens,
        "policies": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))
    Console().print(f"saved {out} and {out.with_suffix('.png')}")
    return 0 if same_tokens else 1


def print_table(rows: dict[str, dict[str, Any]], args: argparse.Namespace, same_tokens: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"latency (s) by policy, {args.model}, {args.num_requests} requests, {args.preemption_mode} preemption")
    for col in ("policy", "short mean", "short p50", "short p99", "short TTFT p50", "long mean", "long p50", "long p99",
                "preempt", "swaps", "recomputed tok", "makespan"):
        table.add_column(col, justify="right")
    for policy, row in rows.items():
        s, l = row["short"], row["long"]
        table.add_row(
            policy, f"{s['mean_s']:.2f}", f"{s['p50_s']:.2f}", f"{s['p99_s']:.2f}", f"{s['ttft_p50_s']:.2f}",
            f"{l['mean_s']:.2f}", f"{l['p50_s']:.2f}", f"{l['p99_s']:.2f}",
            str(row["preemptions"]), str(row["swaps"]), str(row["recomputed_tokens"]), f"{row['makespan_s']:.1f}",
        )
    Console(width=200).print(table)
    Console().print(f"same tokens under every policy: {same_tokens}")


def plot(rows: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, kind in zip(axes, ("short", "long")):
        xs = range(len(policies))
        width = 0.38
        ax.bar([x - width / 2 for x in xs], [rows[p][kind]["p50_s"] for p in policies], width, label="p50")
        ax.bar([x + width / 2 for x in xs], [rows[p][kind]["p99_s"] for p in policies], width, label="p99")
        ax.set_xticks(list(xs), policies)
        ax.set_title(f"{kind} requests: latency (s)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
