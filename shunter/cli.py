"""`shunter` command line: one subcommand per job, each in the module that owns it.

Every command module exposes `add_arguments(parser)` and `run(args) -> int` and keeps its
top-level imports light (torch, Ray and gRPC are imported inside `run`), so `--help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys

from shunter.cli_args import HelpFormatter, Parser

# (command, module, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("generate", "shunter.replica.generate_cli", "generate text from a prompt with one local engine (streams)"),
    ("serve", "shunter.router.serve.cli", "serve the gRPC API from several Ray replicas"),
    ("status", "shunter.router.grpc.status_cli", "print the cluster table of a running server"),
]
BENCHES: list[tuple[str, str, str]] = [
    ("offline", "shunter.loadtest.bench_offline", "offline throughput: Shunter vs Hugging Face static generate"),
    ("step", "shunter.loadtest.bench_step", "host time per engine step, model costing nothing: before/after the persistent batch"),
    ("engine", "shunter.loadtest.bench_engine", "GPU offline throughput on ShareGPT-like lengths vs HF static, HF continuous batching, roofline"),
    ("policies", "shunter.loadtest.bench_policies", "latency of short and long requests under each scheduling policy"),
    ("kernels", "shunter.loadtest.bench_kernels", "paged-attention kernel bandwidth vs copy bandwidth and padded SDPA (GPU)"),
    ("staircase", "shunter.loadtest.bench_staircase", "step time by token count, 16..1,024 in steps of 16: tile boundaries (the start-up timing, at full grid)"),
    ("hop", "shunter.loadtest.bench_hop", "time the router and gRPC hop adds to time to first token"),
    ("http", "shunter.loadtest.bench_http", "what the OpenAI HTTP gateway adds over gRPC: TTFT, chunk gaps, CPU per chunk"),
    ("routing", "shunter.loadtest.bench_routing", "routing decisions per second per policy, index against scan, at 64 to 4,096 fake replicas"),
    ("serve", "shunter.loadtest.bench_serve", "load a running server (loopback) open or closed loop: TTFT, inter-token gaps, throughput, goodput"),
    ("chaos", "shunter.loadtest.bench_chaos", "mixed load while replica processes are SIGKILLed: tokens equal offline, none lost or duplicated"),
    ("migration", "shunter.loadtest.bench_migration", "migration downtime, total time and source slowdown at growing contexts: live vs stop-and-copy"),
    ("speculative", "shunter.loadtest.bench_speculative", "speculative decoding (n-gram or a draft model) against plain decoding at batch 1 on an input-grounded workload: speed-up, acceptance"),
    ("kv-tiers", "shunter.loadtest.bench_kv_tiers", "time to first token of a prefix in the CPU tier of the prefix cache against recomputing it, and a miss's cost"),
    ("structured", "shunter.loadtest.bench_structured", "structured output's cost: time per token at batch 32 and a new schema's first token, against unconstrained"),
    ("sim", "shunter.loadtest.bench_sim", "discrete-event simulation of the real scheduler and router over cost models: the issue-12 experiments"),
]


def _available(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="shunter", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, help_text in COMMANDS:
        mod = _available(module)
        if mod is not None:
            p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    bench = sub.add_parser("bench", help="benchmarks (results go to loadtest/results/)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, module, help_text in BENCHES:
        mod = _available(module)
        if mod is not None:
            p = bench_sub.add_parser(name, help=help_text, description=help_text)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args._invocation = "shunter " + shlex.join(sys.argv[1:] if argv is None else argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format='{"t":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}')
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
