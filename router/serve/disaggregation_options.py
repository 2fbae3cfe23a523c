"""`shunter serve`'s prefill/decode disaggregation options: how many replicas only prefill, and
the uncached prompt length that sends a request to one of them (`routing/disaggregation.py`;
the hand-off after its first token: `core/handoff.py`).

The prefill replicas are the last K (`replica-{N-K}` ...), so they do not overlap the first K
that cache-size specialization gives the large pool. Their last chunk of a prompt is capped
(`--prefill-last-chunk-tokens`): the KV streams to the decode replica while the earlier chunks
run, and what the last one computes crosses after the first token, while the request waits.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from shunter.cli_args import int_at_least
from shunter.router.routing import DEFAULT_THRESHOLD_TOKENS

if TYPE_CHECKING:
    from shunter.replica.engine_config import EngineConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prefill/decode disaggregation")
    group.add_argument("--prefill-replicas", type=int_at_least(0), default=0, metavar="K",
                       help="the last K replicas only prefill: a long prompt starts there and moves, with its KV, to "
                            "another replica after its first token, so long prefills never stall the others' decodes "
                            "(0: off)")
    group.add_argument("--prefill-threshold-tokens", type=int_at_least(1), default=None, metavar="T",
                       help="a prompt with more than T tokens not cached on a decode replica goes to a prefill replica "
                            f"(default {DEFAULT_THRESHOLD_TOKENS} with --prefill-replicas)")
    group.add_argument("--prefill-last-chunk-tokens", type=int_at_least(0), default=None, metavar="T",
                       help="a prefill replica computes a prompt's last T tokens in a step of their own: that step "
                            "makes the first token, and its blocks are what the hand-off's commit carries after it, "
                            "so the commit stays small (default: --migration-commit-blocks x the block size, as a "
                            "live migration's commit; 0: as the step budget allows)")


def validate(args: argparse.Namespace) -> None:
    """ValueError('--option: why') for options that cannot work together; nothing is started."""
    k = args.prefill_replicas
    if k and k >= args.replicas:
        raise ValueError(f"--prefill-replicas: must be below --replicas ({args.replicas}): at least one replica "
                         f"must decode, got {k}")
    if k and k + args.large_cache_replicas > args.replicas:
        raise ValueError(f"--prefill-replicas: {k} prefill and {args.large_cache_replicas} large-cache replicas "
                         f"are more than --replicas ({args.replicas}); the roles do not overlap")
    for name in ("prefill_threshold_tokens", "prefill_last_chunk_tokens"):
        if getattr(args, name) is not None and not k:
            raise ValueError(f"--{name.replace('_', '-')}: needs --prefill-replicas > 0 (no replica to prefill on)")


def threshold(args: argparse.Namespace) -> int | None:
    """The router's prefill threshold; None when no replica only prefills."""
    if not args.prefill_replicas:
        return None
    t = args.prefill_threshold_tokens
    return t if t is not None else DEFAULT_THRESHOLD_TOKENS


def prefill_only(args: argparse.Namespace, index: int) -> bool:
    """Whether the replica spawned `index`-th only prefills: the last K do."""
    return index >= args.replicas - args.prefill_replicas


def last_chunk_tokens(requested: int | None, commit_blocks: int, block_size: int) -> int:
    """A prefill replica's last chunk: as requested, else the blocks a live migration commits with."""
    return requested if requested is not None else commit_blocks * block_size


def with_prefill_roles(args: argparse.Namespace, roles: list[tuple[EngineConfig, bool]]
                       ) -> list[tuple[EngineConfig, bool]]:
    """`roles` (engine config, large cache) with the prefill replicas' last chunk capped."""
    out = []
    for i, (config, large) in enumerate(roles):
        if prefill_only(args, i):
            cap = last_chunk_tokens(args.prefill_last_chunk_tokens, args.migration_commit_blocks, config.block_size)
            config = dataclasses.replace(config, last_chunk_tokens=cap)
        out.append((config, large))
    return out
