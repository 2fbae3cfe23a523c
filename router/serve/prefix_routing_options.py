"""`shunter serve`'s prefix-aware routing options: what a CPU-tier block is worth, and the
imbalance guard (`routing/policies.py: PrefixAware`, after SGLang's router's balance thresholds).

The guard sends a request to the least loaded replica instead of the prefix holder when the two
would differ by more than the absolute threshold and by more than the relative one. SGLang counts
its absolute threshold in requests; ours is in KV blocks (32), or in requests of this one's size
(4 of its expected blocks), whichever is larger: counted in blocks alone, a context of thousands
of tokens (hundreds of blocks) trips the guard on almost every decision and the router stops
following the cache (`docs/results.md`, the simulator's `kv-tiers` experiment).
"""
from __future__ import annotations

import argparse
from typing import Any

from shunter.cli_args import float_above, int_at_least
from shunter.router.routing import PrefixAware

DEFAULTS = PrefixAware()  # the policy's own defaults, for the help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prefix-aware routing (--routing prefix_aware)")
    group.add_argument("--cpu-tier-credit", type=float_above(0, inclusive=True), default=DEFAULTS.cpu_credit,
                       metavar="F", help="what a cached block in a replica's CPU tier (--cpu-kv-gib) counts against "
                                         "one in its device memory (0: only device blocks count)")
    group.add_argument("--balance-abs-threshold", type=int_at_least(0), default=None, metavar="BLOCKS",
                       help="the imbalance guard: follow the cache unless the holder would carry more than BLOCKS KV "
                            "blocks beyond the least loaded replica (and --balance-rel-threshold times it), or "
                            "--balance-abs-threshold-requests of the request's blocks if more "
                            f"(default {DEFAULTS.abs_threshold})")
    group.add_argument("--balance-abs-threshold-requests", type=float_above(0, inclusive=True), default=None,
                       metavar="N", help="the guard's absolute threshold is at least N of the request's own expected "
                                         "blocks, so it grows with the context (SGLang counts its threshold in "
                                         f"requests; 0: BLOCKS alone) (default {DEFAULTS.abs_threshold_requests:g})")
    group.add_argument("--balance-rel-threshold", type=float_above(1.0, inclusive=True), default=None, metavar="R",
                       help="the imbalance guard's ratio of the holder's load to the least loaded's "
                            f"(default {DEFAULTS.rel_threshold:g})")


def validate(args: argparse.Namespace) -> None:
    """ValueError('--option: why'); nothing is started."""
    if args.cpu_tier_credit > 1:
        raise ValueError(f"--cpu-tier-credit: must be in [0, 1] (a block on the device counts 1), "
                         f"got {args.cpu_tier_credit:g}")
    for flag, value in (("--balance-abs-threshold", args.balance_abs_threshold),
                        ("--balance-abs-threshold-requests", args.balance_abs_threshold_requests),
                        ("--balance-rel-threshold", args.balance_rel_threshold)):
        if value is not None and args.routing != "prefix_aware":
            raise ValueError(f"{flag}: only --routing prefix_aware has an imbalance guard, got --routing {args.routing}")


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """`RouterConfig.routing_settings`: the prefix-aware policy's keyword arguments (none for another)."""
    if args.routing != "prefix_aware":
        return {}
    out: dict[str, Any] = {"cpu_credit": args.cpu_tier_credit}
    if args.balance_abs_threshold is not None:
        out["abs_threshold"] = args.balance_abs_threshold
    if args.balance_abs_threshold_requests is not None:
        out["abs_threshold_requests"] = args.balance_abs_threshold_requests
    if args.balance_rel_threshold is not None:
        out["rel_threshold"] = args.balance_rel_threshold
    return out
