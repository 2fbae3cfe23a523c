"""`shunter bench policies`: one stream of requests under each policy.

`--workload mixed` (the default): short requests (short prompt, few tokens, `interactive`) and
long ones (long prompt, many tokens, `batch`) arrive as a seeded Poisson stream. `--workload
shared-prefix`: SGLang's generated-shared-prefix shape (`workloads.shared_prefix`), each request
one of `--groups` long system prompts and a question of its own, under KV pressure when the
groups' prefixes outgrow `--num-kv-blocks`. Each request is added to the engine when the wall
clock reaches its arrival; its latency counts from that arrival to its last token, its wait to
its first scheduled step. The stream, the seats, the token budget and the (deliberately small)
KV pool are the same for every policy, so the table shows only what the policy changes: who
waits, who is preempted, what the prefix cache keeps. A policy named `NAME+cache` is NAME with
cache-aware ordering (`--cache-aware-order`). Greedy decoding with EOS ignored makes every
policy produce the same tokens, checked at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shunter.mathutil import percentile

RESULTS = Path(__file__).resolve().parent / "results"
ALL_POLICIES = ["fcfs", "sjf", "mlq", "priority", "slo", "static", "rad"]
CHOICES = ALL_POLICIES + [f"{p}+cache" for p in ALL_POLICIES if p != "static"]


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
    wait_s: float  # arrival to its first scheduled step
    tokens: list[int] = field(repr=False)


def make_jobs(args: argparse.Namespace, vocab_size: int) -> list[Job]:
    """`--num-requests` jobs, a `--long-fraction` of them long, Poisson arrivals at `--rate`/s
    (`--workload mixed`); or shared-prefix ones (`--workload shared-prefix`)."""
    if args.workload == "shared-prefix":
        from shunter.loadtest.workloads import shared_prefix

        stream = shared_prefix(args.num_requests, args.rate, seed=args.seed, num_groups=args.groups,
                               system_prompt_len=args.prefix_len, question_len=args.question_len,
                               output_len=args.output_len)
        return [Job(r.request_id, "shared", r.prompt_tokens(vocab_size), r.output_len, r.arrival_s) for r in stream]
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


def run_policy(spec: str, jobs: list[Job], args: argparse.Namespace) -> tuple[dict[str, JobResult], dict[str, Any]]:
    """Feed the stream to a fresh engine under `spec` (a policy, `+cache` for cache-aware
    ordering); per-request results and engine stats."""
    from shunter import LLM, SamplingParams
    from shunter.replica.output_collector import OutputCollector

    policy, cache_aware = spec.removesuffix("+cache"), spec.endswith("+cache")
    started = time.perf_counter()
    llm = LLM(
        model=args.model, policy=policy, max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        num_kv_blocks=args.num_kv_blocks, preemption_mode=args.preemption_mode, swap_space=args.swap_space,
        cache_aware_order=cache_aware, num_threads=args.threads,
    )
    startup_s = time.perf_counter() - started
    llm.generate([jobs[0].prompt[:8]], SamplingParams(max_tokens=2, temperature=0.0), use_tqdm=False)  # warm-up
    engine = llm.engine
    base_stats = engine.stats()
    pending = sorted(jobs, key=lambda j: j.arrival_s)
    kinds = {j.request_id: j.kind for j in jobs}
    requests = {}  # the engine's own Request objects: when each was first scheduled
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
            requests[job.request_id] = engine.scheduler.requests[job.request_id]
        if not engine.has_unfinished_requests():
            time.sleep(max(start + pending[0].arrival_s - time.monotonic(), 0.0))
            continue
        for out in collector.fold(engine.step()):
            done = time.monotonic()
            arrival = out.metrics.arrival_time
            first = out.metrics.first_token_time or done
            scheduled = requests[out.request_id].first_scheduled_time or first
            results[out.request_id] = JobResult(kinds[out.request_id], done - arrival, first - arrival,
                                                scheduled - arrival, out.outputs[0].token_ids)
    makespan = time.monotonic() - start
    stats = engine.stats()
    sched = engine.scheduler.stats
    queries, hits = stats.prefix_queries - base_stats.prefix_queries, stats.prefix_hits - base_stats.prefix_hits
    output_tokens = sum(len(r.tokens) for r in results.values())
    waits = [r.wait_s for r in results.values()]
    summary = {
        "makespan_s": makespan,
        "startup_s": startup_s,
        "step_tile_boundaries": list(stats.step_tile_boundaries),
        "prefix_hit_rate": hits / queries if queries else 0.0,
        "output_tok_s": output_tokens / makespan,
        "wait_p50_s": percentile(waits, 0.5), "wait_p99_s": percentile(waits, 0.99),
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
        "ttft_p99_s": percentile(ttft, 0.99),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--policies", nargs="+", default=ALL_POLICIES, choices=CHOICES, metavar="POLICY",
                        help=f"any of {', '.join(ALL_POLICIES)}; NAME+cache: with cache-aware ordering")
    parser.add_argument("--workload", default="mixed", choices=["mixed", "shared-prefix"])
    parser.add_argument("--num-requests", type=int, default=24)
    parser.add_argument("--long-fraction", type=float, default=0.25)
    parser.add_argument("--rate", type=float, default=4.0, help="Poisson arrivals per second")
    parser.add_argument("--short-prompt", type=int, nargs=2, default=[8, 32], metavar=("MIN", "MAX"))
    parser.add_argument("--long-prompt", type=int, nargs=2, default=[160, 256], metavar=("MIN", "MAX"))
    parser.add_argument("--short-output", type=int, nargs=2, default=[8, 16], metavar=("MIN", "MAX"))
    parser.add_argument("--long-output", type=int, nargs=2, default=[24, 40], metavar=("MIN", "MAX"))
    parser.add_argument("--groups", type=int, default=6, help="shared-prefix: system prompts")
    parser.add_argument("--prefix-len", type=int, default=128, help="shared-prefix: tokens of each system prompt")
    parser.add_argument("--question-len", type=int, default=16, help="shared-prefix: tokens of each request's own")
    parser.add_argument("--output-len", type=int, default=8, help="shared-prefix: tokens generated")
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
    kinds = sorted({j.kind for j in jobs}, reverse=True)  # short before long
    console.print(f"{len(jobs)} requests ({', '.join(f'{sum(j.kind == k for j in jobs)} {k}' for k in kinds)}), "
                  f"arrivals over {jobs[-1].arrival_s:.1f} s, {torch.get_num_threads()} threads")
    rows: dict[str, dict[str, Any]] = {}
    tokens: dict[str, dict[str, list[int]]] = {}
    for policy in args.policies:
        results, summary = run_policy(policy, jobs, args)
        tokens[policy] = {rid: r.tokens for rid, r in results.items()}
        rows[policy] = {**{k: latency_summary(results, k) for k in kinds}, **summary}
        console.print(f"{policy}: done in {summary['makespan_s']:.1f} s (start-up {summary['startup_s']:.1f} s)")
    reference = tokens[args.policies[0]]
    same_tokens = all(t == reference for t in tokens.values())
    print_table(rows, kinds, args, same_tokens)
    out = args.out or RESULTS / "bench_policies.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": args._invocation,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "load_average_at_end": os.getloadavg(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")},
        "jobs": [{k: v for k, v in asdict(j).items() if k != "prompt"} | {"prompt_len": len(j.prompt)} for j in jobs],
        "same_tokens_under_every_policy": same_tokens,
        "policies": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, kinds, out.with_suffix(".png"))
    Console().print(f"saved {out} and {out.with_suffix('.png')}")
    return 0 if same_tokens else 1


def print_table(rows: dict[str, dict[str, Any]], kinds: list[str], args: argparse.Namespace, same_tokens: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"latency (s) by policy, {args.model}, {args.num_requests} requests ({args.workload}), "
                        f"{args.preemption_mode} preemption")
    columns = ["policy"] + [f"{k} {c}" for k in kinds for c in ("p50", "p99", "TTFT p50")]
    columns += ["wait p99", "prefix hits", "out tok/s", "preempt", "swaps", "recomputed tok", "makespan"]
    for col in columns:
        table.add_column(col, justify="right")
    for policy, row in rows.items():
        cells = [f"{row[k][c]:.2f}" for k in kinds for c in ("p50_s", "p99_s", "ttft_p50_s")]
        table.add_row(policy, *cells, f"{row['wait_p99_s']:.2f}", f"{row['prefix_hit_rate']:.0%}",
                      f"{row['output_tok_s']:.1f}", str(row["preemptions"]), str(row["swaps"]),
                      str(row["recomputed_tokens"]), f"{row['makespan_s']:.1f}")
    Console(width=200).print(table)
    Console().print(f"same tokens under every policy: {same_tokens}")


def plot(rows: dict[str, dict[str, Any]], kinds: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(rows)
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(5 * (len(kinds) + 1), 4), sharey=False)
    xs = range(len(policies))
    for ax, kind in zip(axes, kinds):
        width = 0.38
        ax.bar([x - width / 2 for x in xs], [rows[p][kind]["p50_s"] for p in policies], width, label="p50")
        ax.bar([x + width / 2 for x in xs], [rows[p][kind]["p99_s"] for p in policies], width, label="p99")
        ax.set_xticks(list(xs), policies, rotation=20, fontsize=8)
        ax.set_title(f"{kind} requests: latency (s)")
        ax.legend()
    ax = axes[-1]
    ax.bar(list(xs), [rows[p]["output_tok_s"] for p in policies])
    for x, p in zip(xs, policies):
        ax.annotate(f"hits {rows[p]['prefix_hit_rate']:.0%}", (x, rows[p]["output_tok_s"]), ha="center", va="bottom",
                    fontsize=7)
    ax.set_xticks(list(xs), policies, rotation=20, fontsize=8)
    ax.set_title("output tokens / s (prefix hit rate)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
