"""`shunter serve`'s prefill/decode disaggregation options: how many replicas only prefill, and
the uncached prompt length that sends a request to one of them (`routing/disaggregation.py`;
the hand-off after its first token: `core/handoff.py`).

The prefill replicas are the last K (`replica-{N-K}` ...), so they do not overlap the first K
that cache-size specialization gives the large pool.
"""
from __future__ import annotations

import argparse

from shunter.cli_args import int_at_least
from shunter.router.routing import DEFAULT_THRESHOLD_TOKENS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prefill/decode disaggregation")
    group.add_argument("--prefill-replicas", type=int_at_least(0), default=0, metavar="K",
                       help="the last K replicas only prefill: a long prompt starts there and moves, with its KV, to "
                            "another replica after its first token, so long prefills never stall the others' decodes "
                            "(0: off)")
    group.add_argument("--prefill-threshold-tokens", type=int_at_least(1), default=None, metavar="T",
                       help="a prompt with more than T tokens not cached on a decode replica goes to a prefill replica "
                            f"(default {DEFAULT_THRESHOLD_TOKENS} with --prefill-replicas)")


def validate(args: argparse.Namespace) -> None:
    """ValueError('--option: why') for options that cannot work together; nothing is started."""
    k = args.prefill_replicas
    if k and k >= args.replicas:
        raise ValueError(f"--prefill-replicas: must be below --replicas ({args.replicas}): at least one replica "
                         f"must decode, got {k}")
    if k and k + args.large_cache_replicas > args.replicas:
        raise ValueError(f"--prefill-replicas: {k} prefill and {args.large_cache_replicas} large-cache replicas "
                         f"are more than --replicas ({args.replicas}); the roles do not overlap")
    if args.prefill_threshold_tokens is not None and not k:
        raise ValueError("--prefill-threshold-tokens: needs --prefill-replicas > 0 (no replica to prefill on)")


def threshold(args: argparse.Namespace) -> int | None:
    """The router's prefill threshold; None when no replica only prefills."""
    if not args.prefill_replicas:
        return None
    t = args.prefill_threshold_tokens
    return t if t is not None else DEFAULT_THRESHOLD_TOKENS


def prefill_only(args: argparse.Namespace, index: int) -> bool:
    """Whether the replica spawned `index`-th only prefills: the last K do."""
    return index >= args.replicas - args.prefill_replicas
