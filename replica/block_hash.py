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
    h = xxhash.xxh64(seed=0)
    h.update(parent_hash.to_bytes(8, "little"))
    h.update(array.array("q", token_ids).tobytes())
    return h.intdigest()


def block_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """Hashes of every full block of `token_ids`, in order."""
    hashes: list[int] = []
    parent = ROOT_HASH
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash_block(parent, token_ids[start : start + block_size])
        hashes.append(parent)
    return hashes
