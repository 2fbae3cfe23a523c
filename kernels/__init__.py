"""Paged-attention ops. Each dispatches to a Triton kernel for CUDA tensors (or under
`TRITON_INTERPRET=1`) and to its torch reference twin otherwise."""
from __future__ import annotations

import torch

from shunter.kernels import reference

__all__ = ["write_kv_cache", "paged_attention_decode", "paged_attention_prefill", "attention", "copy_blocks"]

write_kv_cache = reference.write_kv_cache
paged_attention_decode = reference.paged_attention_decode
paged_attention_prefill = reference.paged_attention_prefill
copy_blocks = reference.copy_blocks


def attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    max_query_len: int,
    scale: float | None = None,
) -> torch.Tensor:
    """The one call a model layer makes: decode kernel when every query is one token."""
    if max_query_len == 1:
        return paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale)
    return paged_attention_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale)
