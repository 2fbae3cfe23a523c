"""Pack one step's scheduled chunks into a ragged batch: no padding, one row per token.

A pure function of plain lists, so it is tested without a model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from shunter.replica.attention_metadata import AttentionMetadata


@dataclass
class Chunk:
    """Tokens `start .. start+len(token_ids)` of one sequence, whose KV lives in `block_ids`."""

    token_ids: list[int]
    start: int
    block_ids: list[int]
    sample: bool  # produce logits for the chunk's last token


@dataclass
class Batch:
    input_ids: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    attn: AttentionMetadata
    logits_indices: torch.Tensor  # int64 [N]: rows whose logits are sampled, in chunk order


def pack(chunks: list[Chunk], block_size: int, device: torch.device | str = "cpu") -> Batch:
    if not chunks:
        raise ValueError("cannot pack an empty step")
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    cu = [0]
    context_lens: list[int] = []
    logits_indices: list[int] = []
    max_blocks = max(len(c.block_ids) for c in chunks)
    tables = [c.block_ids + [0] * (max_blocks - len(c.block_ids)) for c in chunks]
    for c in chunks:
        end = c.start + len(c.token_ids)
        input_ids.extend(c.token_ids)
        positions.extend(range(c.start, end))
        slots.extend(c.block_ids[p // block_size] * block_size + p % block_size for p in range(c.start, end))
        cu.append(len(input_ids))
        context_lens.append(end)
        if c.sample:
            logits_indices.append(len(input_ids) - 1)
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    as_int = lambda xs: torch.tensor(xs, dtype=torch.int32, device=device)  # noqa: E731
    attn = AttentionMetadata(
        slot_mapping=as_long(slots),
        block_tables=as_int(tables),
        cu_seqlens_q=as_int(cu),
        context_lens=as_int(context_lens),
        max_query_len=max(len(c.token_ids) for c in chunks),
    )
    return Batch(as_long(input_ids), as_long(positions), attn, as_long(logits_indices))
