"""The ragged packing function, without a model."""
from __future__ import annotations

import pytest

from shunter.replica.packing import Chunk, pack


def test_packs_prefill_chunk_and_decodes_without_padding():
    chunks = [
        Chunk(token_ids=[11, 12, 13], start=0, block_ids=[7], sample=True),  # fresh prompt
        Chunk(token_ids=[21], start=5, block_ids=[2, 9], sample=True),  # decode at position 5
        Chunk(token_ids=[31, 32], start=4, block_ids=[3, 4, 5], sample=False),  # middle of a chunked prefill
    ]
    b = pack(chunks, block_size=4)
    assert b.input_ids.tolist() == [11, 12, 13, 21, 31, 32]
    assert b.positions.tolist() == [0, 1, 2, 5, 4, 5]
    assert b.attn.slot_mapping.tolist() == [28, 29, 30, 9 * 4 + 1, 4 * 4 + 0, 4 * 4 + 1]
    assert b.attn.cu_seqlens_q.tolist() == [0, 3, 4, 6]
    assert b.attn.context_lens.tolist() == [3, 6, 6]
    assert b.attn.block_tables.tolist() == [[7, 0, 0], [2, 9, 0], [3, 4, 5]]
    assert b.attn.max_query_len == 3
    assert b.logits_indices.tolist() == [2, 3]


def test_empty_step_is_refused():
    with pytest.raises(ValueError):
        pack([], block_size=4)
