"""`shunter serve`'s Prometheus options: the frontend's page, each replica's page, where they listen.

Off unless asked for. The frontend's page (`--metrics-port`) has everything a dashboard needs:
request timings, every replica's engine metrics and the router's counters. Replica pages
(`--replica-metrics-port-base`) are for scraping each replica where it runs: replica i listens on
BASE + i on its own node, a port that stays the same when Ray restarts it; BASE 0 lets each take
any free port, which `shunter status` lists. A port of 0 for the frontend, likewise, takes any
free one, printed at start. Light to import: `--help` does not load prometheus_client.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from shunter.cli_args import int_at_least


@dataclass(frozen=True)
class MetricsAddress:
    """Where a page listens (port 0: any free one), and the model its samples are labelled with."""

    host: str
    port: int
    model: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("metrics (Prometheus)")
    group.add_argument("--metrics-port", type=int_at_least(0, 65535), default=None, metavar="PORT",
                       help="serve the frontend's page at http://METRICS_HOST:PORT/metrics (0: any free port, "
                            "printed at start; default: off)")
    group.add_argument("--metrics-host", default="127.0.0.1",
                       help="address the metrics pages listen on, the replicas' on their own nodes (0.0.0.0: all)")
    group.add_argument("--replica-metrics-port-base", type=int_at_least(0, 65535), default=None, metavar="BASE",
                       help="replica i also serves its own page on port BASE+i of its node (0: any free port each, "
                            "listed by `shunter status`; default: off)")


def validate(args: argparse.Namespace) -> None:
    """ValueError('--option: why'); the frontend's port is checked free by serve's own check."""
    base = args.replica_metrics_port_base
    if base and base + args.replicas - 1 > 65535:
        raise ValueError(f"--replica-metrics-port-base: {args.replicas} replicas from {base} go past port 65535")
    if args.metrics_port and args.metrics_port == args.port:
        raise ValueError(f"--metrics-port: {args.port} is the gRPC --port")


def frontend_address(args: argparse.Namespace) -> MetricsAddress | None:
    return None if args.metrics_port is None else MetricsAddress(args.metrics_host, args.metrics_port, args.model)


def replica_address(args: argparse.Namespace, index: int) -> MetricsAddress | None:
    base = args.replica_metrics_port_base
    if base is None:
        return None
    return MetricsAddress(args.metrics_host, base + index if base else 0, args.model)
