"""`shunter bench serve`: load a running server with a seeded workload; latency, throughput, goodput.

Open loop (`--rate R [R ...]`, a sweep when several): requests arrive as a Poisson process at
that rate (gamma with `--arrival-cv` > 1: bursty), or at a trace's recorded times; closed loop
(`--concurrency C [C ...]`): C requests always in flight. The workloads are
`shunter.loadtest.workloads`' (the simulator replays the same ones); `--option KEY=VALUE` sets a
generator's keyword argument. Each run is bounded by `--num-requests` and `--duration` and
stops by itself; Ctrl-C stops it too, and what was measured is written. Only a server on this
machine may be loaded (`--target` is loopback), over gRPC or the OpenAI HTTP gateway
(`--backend http`). Writes JSON (every request's TTFT, inter-token gaps, end-to-end latency,
tokens, replica and cached tokens, and each run's summary) and a PNG of the latency CDFs and
latency, goodput and SLO attainment against the rate.

Prompts are token ids (`prompt_token_ids`), drawn below `--vocab-size`: the default 256 is
inside every model Shunter serves (fake:bytes has 259), so no tokenizer is needed here. Lengths
and arrival times follow `--seed`; the tokens are each run's own (a random salt, recorded), so
no run is served from a prefix cache an earlier run left warm.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import platform
import re
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shunter.cli_args import float_above, int_at_least
from shunter.loadtest.bench_cli import run_bench
from shunter.loadtest.load_backend import loopback_target
from shunter.loadtest.load_driver import LoadDriver, RunResult
from shunter.loadtest.workloads import WORKLOADS, WorkloadRequest, make_workload

RESULTS = Path(__file__).resolve().parent / "results"
# The load client's shared-prefix: many tenants in multi-turn conversations (the generator's own
# defaults are SGLang's single-turn 64 groups, which the simulator's experiments keep).
WORKLOAD_DEFAULTS: dict[str, dict[str, Any]] = {"shared-prefix": {"num_groups": 150, "turns": 4, "think_s": 1.0}}


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"want KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", type=loopback_target, default="127.0.0.1:50051",
                        help="the server, HOST:PORT; HOST must be 127.0.0.1, localhost or ::1 (default: %(default)s; "
                             "with --backend http, the server's --http-port)")
    parser.add_argument("--backend", choices=["grpc", "http"], default="grpc",
                        help="gRPC Generate, or the OpenAI HTTP gateway's /v1/completions (default: %(default)s)")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="sharegpt", help="(default: %(default)s)")
    parser.add_argument("--trace", type=Path, help="JSONL trace to replay (--workload trace)")
    parser.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                        help="a keyword argument of the workload generator, e.g. turns=3 (repeatable)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float_above(0), nargs="+", metavar="R",
                      help="open loop: requests per second (inf: all at once); several values make a sweep")
    load.add_argument("--concurrency", type=int_at_least(1), nargs="+", metavar="C",
                      help="closed loop: requests kept in flight; several values make a sweep")
    parser.add_argument("--arrival-cv", type=float_above(0), default=1.0,
                        help="inter-arrival coefficient of variation: 1 Poisson, > 1 bursty (gamma) (default: %(default)s)")
    parser.add_argument("--num-requests", type=int_at_least(1), default=200, help="per run (default: %(default)s)")
    parser.add_argument("--duration", type=float_above(0), default=300.0,
                        help="seconds a run may take; then in-flight requests are cancelled (default: %(default)s)")
    parser.add_argument("--max-input-len", type=int_at_least(1),
                        help="cap on a prompt's shared prefix + own tokens (a conversation's history comes on top)")
    parser.add_argument("--max-output-len", type=int_at_least(1), help="cap on output tokens")
    parser.add_argument("--ttft-slo-ms", type=float_above(0),
                        help="TTFT target of requests that carry none (default: the server's class default)")
    parser.add_argument("--tbt-slo-ms", type=float_above(0),
                        help="inter-token target of requests that carry none (default: the server's class default)")
    parser.add_argument("--vocab-size", type=int_at_least(21), default=256,
                        help="prompt token ids are drawn below it (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--out", type=Path, help="JSON path; the PNG goes beside it "
                        "(default: loadtest/results/bench_serve_WORKLOAD.json)")


def capped(r: WorkloadRequest, max_input: int | None, max_output: int | None) -> WorkloadRequest:
    """`r` with its prefix + own prompt tokens and its output within the caps (history untouched)."""
    changes: dict[str, Any] = {}
    if max_output is not None and r.output_len > max_output:
        changes["output_len"] = max_output
    if max_input is not None and r.prompt_len - r.history_len > max_input:
        prefix = min(r.prefix_len, max_input)
        own = min(r.prompt_len - r.prefix_len - r.history_len, max_input - prefix)
        changes.update(prefix_len=prefix, prompt_len=prefix + r.history_len + own)
        if r.prompt_token_ids is not None:
            changes["prompt_token_ids"] = r.prompt_token_ids[:max_input]
    return dataclasses.replace(r, **changes) if changes else r


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The generator's keyword arguments: the load client's defaults, then `--option`s, then `--trace`."""
    options = WORKLOAD_DEFAULTS.get(args.workload, {}) | dict(args.option)
    return options | ({"path": args.trace} if args.workload == "trace" else {})


def fresh_prompts(r: WorkloadRequest, salt: int) -> WorkloadRequest:
    """`r` with other prompt tokens (unless a trace gave them), the same lengths, times and
    sharing: each run finds nothing in the server's prefix cache that an earlier run or
    invocation left there (the first sweep measured here hit 93% of its prompt tokens so)."""
    prefix_id = r.prefix_id ^ salt if r.prefix_id is not None else None  # a bijection: groups stay apart
    return dataclasses.replace(r, seed=r.seed ^ salt, prefix_id=prefix_id)


def workload(args: argparse.Namespace, rate: float | None, salt: int) -> list[WorkloadRequest]:
    """The run's requests: seeded lengths and times (`--seed`), prompt tokens salted by `salt`."""
    options = _options(args)
    if args.workload != "trace":
        options.setdefault("cv", args.arrival_cv)
        rate = rate if rate is not None else float("inf")  # closed loop: arrival times are not used
    requests = make_workload(args.workload, args.num_requests, rate, args.seed, **options)
    return [fresh_prompts(capped(r, args.max_input_len, args.max_output_len), salt) for r in requests]


@dataclass
class Point:
    """One run of the sweep: its rate or concurrency, and what it measured."""

    label: str
    rate: float | None  # None: closed loop, or a trace at its recorded times
    concurrency: int | None
    result: RunResult | None = None
    offered_rate: float = float("nan")  # requests per second the schedule offered (open loop)
    prompt_salt: int = 0  # what made its prompt tokens its own (`fresh_prompts`)


def points(args: argparse.Namespace) -> tuple[str, list[Point]]:
    """(x-axis name, the runs to make)."""
    if args.concurrency:
        return "concurrency", [Point(f"concurrency {c}", None, c) for c in args.concurrency]
    if args.rate:
        return "rate (req/s)", [Point(f"rate {r:g}/s", r, None) for r in args.rate]
    return "rate (req/s)", [Point("trace times", None, None)]


def _offered(requests: list[WorkloadRequest]) -> float:
    span = max(r.arrival_s for r in requests) - min(r.arrival_s for r in requests)
    return (len(requests) - 1) / span if span > 0 else float("inf")


def _rounded(value: Any) -> Any:
    """Floats to 6 decimals (a microsecond), and None where not finite (JSON has no inf)."""
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


async def _sweep(args: argparse.Namespace, sweep: list[Point]) -> bool:
    """Make the runs in order (filling their `result`) until Ctrl-C stops one; True if it did."""
    from tqdm import tqdm

    from shunter.loadtest.load_backend import GrpcBackend, HttpBackend

    loop, stop = asyncio.get_running_loop(), asyncio.Event()

    def interrupt() -> None:  # the first Ctrl-C stops the run and writes; a second one is Python's
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)

    loop.add_signal_handler(signal.SIGINT, interrupt)
    backend = HttpBackend(args.target) if args.backend == "http" else GrpcBackend(args.target)
    tag = secrets.token_hex(3)
    try:
        for i, point in enumerate(sweep):
            point.prompt_salt = secrets.randbits(62)
            requests = workload(args, point.rate, point.prompt_salt)
            if point.concurrency is None:
                point.offered_rate = _offered(requests)
            with tqdm(total=len(requests), desc=point.label, unit="req", disable=None, file=sys.stderr) as bar:
                driver = LoadDriver(backend, requests, args.vocab_size, point.concurrency,
                                    (args.ttft_slo_ms, args.tbt_slo_ms), f"{tag}-{i}-", on_done=lambda _: bar.update(1))
                point.result = await driver.run(args.duration, stop)
            if stop.is_set():
                break
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await backend.close()
    return stop.is_set()


def _to_json(result: dict[str, Any]) -> str:
    """Indented, but one line per request: a run of thousands of requests stays readable."""
    lines: list[str] = []
    for run in result["runs"]:
        keys = []
        for record in run["requests"]:
            keys.append(f"@{len(lines)}@")
            lines.append(json.dumps(record, separators=(",", ":"), allow_nan=False))
        run["requests"] = keys
    text = json.dumps(result, indent=1, default=str, allow_nan=False)
    return re.sub(r'"@(\d+)@"', lambda m: lines[int(m.group(1))], text) + "\n"


def _table(rows: list[tuple[str, Any]]) -> str:
    head = ("run", "sent", "finished", "errors", "req/s", "out tok/s", "TTFT p50/p99 ms", "gap p50/p99 ms",
            "TPOT p50/p99 ms", "e2e p50/p99 ms", "goodput req/s", "SLO met")
    lines = [head]
    for label, s in rows:
        errors = ",".join(f"{k}:{v}" for k, v in s.errors.items()) or "0"
        lines.append((label, str(s.sent), str(s.finished), errors, f"{s.request_throughput:.2f}",
                      f"{s.output_throughput:.1f}", f"{s.ttft_ms.p50:.0f}/{s.ttft_ms.p99:.0f}",
                      f"{s.tbt_ms.p50:.0f}/{s.tbt_ms.p99:.0f}", f"{s.tpot_ms.p50:.0f}/{s.tpot_ms.p99:.0f}",
                      f"{s.e2e_ms.p50:.0f}/{s.e2e_ms.p99:.0f}",
                      f"{s.goodput:.2f}", f"{s.slo_attainment:.0%}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)


def run(args: argparse.Namespace) -> int:
    from shunter.loadtest.load_metrics import summarize
    from shunter.loadtest.load_plots import plot

    if (args.workload == "trace") != (args.trace is not None):
        print("error: --trace FILE goes with --workload trace, and only with it", file=sys.stderr)
        return 2
    if args.workload != "trace" and not (args.rate or args.concurrency):
        print("error: --rate or --concurrency is required (a trace alone replays its recorded times)", file=sys.stderr)
        return 2
    x_label, sweep = points(args)
    stopped = asyncio.run(_sweep(args, sweep))
    done = [(p, p.result, summarize(p.result.records, p.result.duration_s)) for p in sweep if p.result is not None]
    print(_table([(p.label + (f" (cut: {r.cut})" if r.cut else ""), s) for p, r, s in done]))
    for p, _, s in done:
        if s.moved:
            print(f"{p.label}: {s.moved} requests served by more than one replica; their largest gap between tokens "
                  f"(median) {s.worst_gap_moved_ms:.0f} ms, {s.worst_gap_moved_ms / max(s.worst_gap_stayed_ms, 1e-9):.2f}x "
                  f"the others' {s.worst_gap_stayed_ms:.0f} ms")
    out = args.out or RESULTS / f"bench_serve_{args.workload}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "bench": "serve", "command": args._invocation, "target": args.target, "backend": args.backend, "workload": args.workload,
        "options": _options(args), "mode": "closed" if args.concurrency else "open",
        "arrival_cv": args.arrival_cv, "num_requests": args.num_requests, "duration_cap_s": args.duration,
        "max_input_len": args.max_input_len, "max_output_len": args.max_output_len,
        "ttft_slo_ms": args.ttft_slo_ms, "tbt_slo_ms": args.tbt_slo_ms, "vocab_size": args.vocab_size,
        "seed": args.seed, "stopped_by_user": stopped,
        "runs": [{"label": p.label, "rate": _rounded(p.rate), "concurrency": p.concurrency,
                  "offered_rate": _rounded(p.offered_rate), "prompt_salt": p.prompt_salt,
                  "cut": r.cut, "summary": _rounded(dataclasses.asdict(s)),
                  "requests": [_rounded(dataclasses.asdict(rec)) for rec in r.records]} for p, r, s in done],
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out.write_text(_to_json(result))
    png = out.with_suffix(".png")
    x = (lambda p: float(p.concurrency)) if args.concurrency else (lambda p: p.rate if p.rate else p.offered_rate)
    offered = None if args.concurrency else [p.offered_rate for p, _, _ in done]
    plot([(p.label, x(p), s, r.records) for p, r, s in done], x_label, png, offered)
    print(f"wrote {out} and {png}" + (" (stopped by Ctrl-C: the runs so far)" if stopped else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_bench("serve", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
