"""The router hashes whole prompts (`block_hashes`) and the engine hashes blocks one at a time as
they fill (`hash_block`): the two must name every block alike, or prefix-aware routing would
never find a prefix a replica holds."""
from __future__ import annotations

import random

from shunter.replica.block_hash import ROOT_HASH, block_hashes, hash_block


def test_whole_prompt_hashes_equal_the_chain_of_block_hashes():
    rng = random.Random(0)
    for n in (0, 15, 16, 17, 100, 552):
        tokens = [rng.randrange(0, 200_000) for _ in range(n)]
        parent, chain = ROOT_HASH, []
        for start in range(0, n - 15, 16):
            parent = hash_block(parent, tokens[start:start + 16])
            chain.append(parent)
        assert block_hashes(tokens, 16) == chain


def test_a_chain_goes_on_from_a_parent_as_if_hashed_whole():
    """The engine hashes the blocks a prefill chunk filled from the last block it named."""
    tokens = list(range(1000, 1100))
    whole = block_hashes(tokens, 16)
    for first in (0, 1, 3):
        parent = whole[first - 1] if first else ROOT_HASH
        assert block_hashes(tokens[16 * first:], 16, parent) == whole[first:]


def test_a_block_is_named_by_everything_before_it():
    a, b = [1] * 16 + [2] * 16, [3] * 16 + [2] * 16
    assert block_hashes(a, 16)[1] != block_hashes(b, 16)[1]  # same tokens, another parent
    assert block_hashes(a, 16)[0] == block_hashes(a + [9] * 5, 16)[0]
