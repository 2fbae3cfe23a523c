"""`shunter serve`'s cache-size specialization options: which replicas get the large KV pool,
how large it is, and the request size that sends a request to one of them.

Kept apart from `cli.py` so the serve command only asks three things of it: check the
options, give each replica its engine config and role, and give the router its threshold.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shunter.replica.engine_config import EngineConfig

DEFAULT_FACTOR = 4.0
DEFAULT_THRESHOLD_BLOCKS = 32  # 512 tokens at the default block size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cache-size specialization")
    group.add_argument("--large-cache-replicas", type=int, default=0, metavar="K",
                       help="the first K replicas get a KV pool --large-cache-factor times larger and take the long "
                            "requests (default 0: off)")
    group.add_argument("--large-cache-factor", type=float, default=DEFAULT_FACTOR, metavar="F",
                       help=f"how much larger: F x --num-kv-blocks, or on CPU without it F x the share of free memory "
                            f"a pool takes (default {DEFAULT_FACTOR:g})")
    group.add_argument("--size-threshold-blocks", type=int, default=None, metavar="B",
                       help="a request expected to take (or grown to) more than B KV blocks is placed on (or moved to) a "
                            f"large-cache replica (default {DEFAULT_THRESHOLD_BLOCKS} with --large-cache-replicas)")


def validate(args: argparse.Namespace) -> None:
    """ValueError('--option: why') for options that cannot work together; nothing is started."""
    k, b = args.large_cache_replicas, args.size_threshold_blocks
    if k and not 0 < k < args.replicas:
        raise ValueError(f"--large-cache-replicas: must be in 0..{args.replicas - 1} (the other replicas keep the "
                         f"small pool), got {k}")
    if not args.large_cache_factor > 1:
        raise ValueError(f"--large-cache-factor: must be > 1, got {args.large_cache_factor}")
    if b is not None and not k:
        raise ValueError("--size-threshold-blocks: needs --large-cache-replicas > 0 (no replica to send long requests to)")
    if b is not None and b < 1:
        raise ValueError(f"--size-threshold-blocks: must be >= 1, got {b}")
    if b is not None and args.num_kv_blocks is not None and b >= args.num_kv_blocks:
        raise ValueError(f"--size-threshold-blocks: must be below --num-kv-blocks ({args.num_kv_blocks}), got {b}: "
                         f"no request on a small replica could reach it")


def threshold(args: argparse.Namespace) -> int | None:
    """The router's size threshold; None when no replica has the large pool."""
    if not args.large_cache_replicas:
        return None
    return args.size_threshold_blocks if args.size_threshold_blocks is not None else DEFAULT_THRESHOLD_BLOCKS


def replica_roles(args: argparse.Namespace, config: EngineConfig) -> list[tuple[EngineConfig, bool]]:
    """(engine config, large_cache) per replica, in spawn order: the first K get the large pool."""
    large = config
    if args.large_cache_replicas:
        large = _large_config(config, args.large_cache_factor)
    return [(large, True) if i < args.large_cache_replicas else (config, False) for i in range(args.replicas)]


def _large_config(config: EngineConfig, factor: float) -> EngineConfig:
    if config.num_kv_blocks is not None:
        return dataclasses.replace(config, num_kv_blocks=math.ceil(factor * config.num_kv_blocks))
    if config.device != "cpu":
        raise ValueError("--large-cache-factor: on a GPU give --num-kv-blocks too (the pools are otherwise sized "
                         "from GPU memory the replicas share)")
    fraction = factor * config.kv_memory_fraction
    if fraction > 1:
        raise ValueError(f"--large-cache-factor: {factor:g} x the free-memory share of a pool "
                         f"({config.kv_memory_fraction:g}) is over all free memory; give --num-kv-blocks")
    return dataclasses.replace(config, kv_memory_fraction=fraction)
