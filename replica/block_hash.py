"""Names of full KV blocks: a hash of the block's tokens chained with its parent's hash.

Two requests with the same first k blocks of tokens get the same k hashes, which is what lets
a replica share cached blocks and the router know which replica holds a prefix.
"""
from __future__ import annotations

import array
from typing import Sequence

import xxhash

ROOT_HASH = 0


def hash_block(parent_hash: int, token_ids: Sequence[int]) -> int:
    """xxh64 of the block's tokens (int64 little-endian), seeded with the parent's hash."""
    return xxhash.xxh64_intdigest(array.array("q", token_ids).tobytes(), parent_hash)


def block_hashes(token_ids: Sequence[int], block_size: int, parent: int = ROOT_HASH) -> list[int]:
    """Hashes of every full block of `token_ids`, in order: `hash_block` chained from `parent`,
    with the tokens turned into bytes once (the router hashes every prompt it routes by prefix;
    an engine, the blocks a prefill chunk filled)."""
    data, step = array.array("q", token_ids).tobytes(), 8 * block_size
    digest, hashes = xxhash.xxh64_intdigest, []
    for start in range(0, len(token_ids) // block_size * step, step):
        parent = digest(data[start:start + step], parent)
        hashes.append(parent)
    return hashes
