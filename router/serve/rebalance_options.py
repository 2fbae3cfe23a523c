"""`shunter serve`'s rebalancing options: whether running requests move between replicas, how
often, how many a round, and what decides it (`router/routing/rebalancer.py`)."""
from __future__ import annotations

import argparse
from typing import Any

from shunter.cli_args import float_above, int_at_least
from shunter.router.routing import MEASURES, Rebalancer

DEFAULTS = Rebalancer()  # its settings' defaults, for the help and the flags' defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("rebalancing (moving running requests between replicas)")
    group.add_argument("--no-rebalance", action="store_true", help="turn off rebalancing")
    group.add_argument("--rebalance-measure", choices=MEASURES, default=DEFAULTS.measure,
                       help="what decides a move: freeness (a replica's free KV blocks, its queue counted in, per "
                            "request growing into them: one about to preempt gives requests to the freest), or the "
                            "load pairs of before, expected (each request at its expected end, what routing "
                            "balances) or usage (KV blocks held now plus queues)")
    group.add_argument("--rebalance-interval", type=float_above(0), default=DEFAULTS.interval_s, metavar="S",
                       help="seconds between two rounds of planning")
    group.add_argument("--rebalance-max-moves", type=int_at_least(1), default=DEFAULTS.max_per_round, metavar="N",
                       help="migrations a round may start")
    group.add_argument("--rebalance-pressure", type=float_above(0), default=DEFAULTS.pressure_blocks, metavar="B",
                       help="freeness: a replica with fewer free KV blocks than this per running request is about to "
                            "preempt, and gives requests to replicas that stay above it")


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The Rebalancer's settings (`RouterConfig.rebalancer_settings`)."""
    return {"measure": args.rebalance_measure, "interval_s": args.rebalance_interval,
            "max_per_round": args.rebalance_max_moves, "pressure_blocks": args.rebalance_pressure}
