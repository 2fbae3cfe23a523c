"""What every attention layer needs to read and write the paged KV cache for one step."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Ragged batch layout: sequence s owns tokens `cu_seqlens_q[s]:cu_seqlens_q[s+1]`, which are
    the last positions of its `context_lens[s]` tokens (cached ones included)."""

    slot_mapping: torch.Tensor  # int64 [T]: flat KV slot of each new token; -1 = do not store
    block_tables: torch.Tensor  # int32 [S, max_blocks]: block ids per sequence (padded with 0)
    cu_seqlens_q: torch.Tensor  # int32 [S + 1]
    context_lens: torch.Tensor  # int32 [S]: tokens in the cache after this step, per sequence
    max_query_len: int
