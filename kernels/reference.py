"""Torch reference twins of the paged-attention kernels.

They define the semantics the Triton kernels must match and are what the CPU engine runs.
They are vectorized (one gather and one SDPA call per group: decodes in up to four groups of
similar length, chunks in one), not per-sequence loops, because the CPU engine's speed depends
on them.

KV cache layout: `[num_blocks, block_size, num_kv_heads, head_dim]`, one (k, v) pair per layer.
A sequence's token at position p lives in block `block_tables[s, p // block_size]` at offset
`p % block_size`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def write_kv_cache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store `key`/`value` `[T, Hkv, D]` at flat slots `slot_mapping` `[T]`; slot -1 is skipped."""
    slots = slot_mapping.long()
    keep = slots >= 0
    if not bool(keep.all()):
        slots, key, value = slots[keep], key[keep], value[keep]
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slots, key.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slots, value.to(v_cache.dtype))


def _gather_kv(cache: torch.Tensor, block_tables: torch.Tensor, max_len: int) -> torch.Tensor:
    """`[S, max_len, Hkv, D]`: each sequence's cached tokens, contiguous (padded past its length)."""
    S, max_blocks = block_tables.shape
    block_size = cache.shape[1]
    needed = min(max_blocks, (max_len + block_size - 1) // block_size)
    # index_select, not cache[ids]: advanced indexing is ~3x slower on CPU for the same copy.
    ids = block_tables[:, :needed].reshape(-1).long().clamp_min(0)
    gathered = torch.index_select(cache, 0, ids)  # [S * needed, bs, H, D]
    return gathered.view(S, needed * block_size, *cache.shape[2:])[:, :max_len]


def _attend(q_pad: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """q_pad `[S, Lq, Hq, D]`, k/v `[S, Lk, Hkv, D]`, mask `[S, Lq, Lk]` (True = attend)."""
    out = F.scaled_dot_product_attention(
        q_pad.transpose(1, 2),
        k.transpose(1, 2).to(q_pad.dtype),
        v.transpose(1, 2).to(q_pad.dtype),
        attn_mask=mask.unsqueeze(1),
        scale=scale,
        enable_gqa=q_pad.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


# Decodes are attended in at most this many groups of similar context length, each gathered
# and padded only to its own longest: the gather (a copy of every sequence's KV, padded to the
# longest) was over half of a CPU decode step at 64 sequences of spread lengths.
DECODE_GROUPS = 4
MIN_GROUP = 8  # sequences: below this a group's fixed cost outweighs the padding it saves


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """One query per sequence (`q` `[S, Hq, D]`) over its first `context_lens[s]` cached tokens."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    lens = context_lens.tolist()
    S = len(lens)
    groups = min(DECODE_GROUPS, S // MIN_GROUP)
    if groups < 2:
        return _decode_group(q, k_cache, v_cache, block_tables, context_lens, max(lens), scale)
    order = sorted(range(S), key=lens.__getitem__)
    out = torch.empty_like(q)
    for g in range(groups):  # equal counts in length order: each pads to its own longest
        rows = order[g * S // groups : (g + 1) * S // groups]
        ids = torch.tensor(rows, device=q.device)
        out[ids] = _decode_group(q[ids], k_cache, v_cache, block_tables[ids], context_lens[ids],
                                 lens[rows[-1]], scale)
    return out


def _decode_group(q, k_cache, v_cache, block_tables, context_lens, max_len: int, scale: float) -> torch.Tensor:
    k = _gather_kv(k_cache, block_tables, max_len)
    v = _gather_kv(v_cache, block_tables, max_len)
    mask = torch.arange(max_len, device=q.device)[None, :] < context_lens[:, None].to(q.device)
    return _attend(q.unsqueeze(1), k, v, mask.unsqueeze(1), scale).squeeze(1)


def paged_attention_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Ragged causal attention: sequence s owns queries `cu_seqlens_q[s]:cu_seqlens_q[s+1]`, which
    are the last positions of its `context_lens[s]` cached tokens (chunked prefill, prefix hits)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    cu = cu_seqlens_q.long().to(q.device)
    q_lens = cu[1:] - cu[:-1]
    is_decode = q_lens == 1
    if bool(is_decode.any()) and not bool(is_decode.all()):
        # Padding every sequence to the longest chunk would cost S x max_q: attend the
        # one-token sequences (decodes) and the chunks in two groups instead.
        out = torch.empty_like(q)
        decode_tokens = cu[:-1][is_decode]
        out[decode_tokens] = paged_attention_decode(
            q[decode_tokens], k_cache, v_cache, block_tables[is_decode], context_lens[is_decode], scale
        )
        chunk_token_mask = ~torch.repeat_interleave(is_decode, q_lens, output_size=q.shape[0])
        chunk_cu = F.pad(torch.cumsum(q_lens[~is_decode], 0), (1, 0))
        out[chunk_token_mask] = _prefill_padded(
            q[chunk_token_mask], k_cache, v_cache, block_tables[~is_decode], chunk_cu, context_lens[~is_decode], scale
        )
        return out
    return _prefill_padded(q, k_cache, v_cache, block_tables, cu, context_lens, scale)


def _prefill_padded(q, k_cache, v_cache, block_tables, cu, context_lens, scale) -> torch.Tensor:
    device = q.device
    q_lens = cu[1:] - cu[:-1]
    S, T = q_lens.numel(), q.shape[0]
    max_q, max_len = int(q_lens.max()), int(context_lens.max())
    seq_of_token = torch.repeat_interleave(torch.arange(S, device=device), q_lens, output_size=T)
    index_in_seq = torch.arange(T, device=device) - cu[:-1][seq_of_token]
    q_pad = q.new_zeros(S, max_q, *q.shape[1:])
    q_pad[seq_of_token, index_in_seq] = q
    k = _gather_kv(k_cache, block_tables, max_len)
    v = _gather_kv(v_cache, block_tables, max_len)
    ctx = context_lens.long().to(device)
    # Query i of sequence s sits at position ctx_s - q_len_s + i and sees keys 0..that position.
    query_pos = (ctx - q_lens)[:, None] + torch.arange(max_q, device=device)[None, :]
    key_pos = torch.arange(max_len, device=device)
    mask = (key_pos[None, None, :] <= query_pos[:, :, None]) & (key_pos[None, None, :] < ctx[:, None, None])
    out = _attend(q_pad, k, v, mask, scale)
    return out[seq_of_token, index_in_seq]


def copy_blocks(src_cache: torch.Tensor, dst_cache: torch.Tensor, src_ids: torch.Tensor, dst_ids: torch.Tensor) -> None:
    """`dst_cache[dst_ids] = src_cache[src_ids]` across devices (swap out/in, migration)."""
    if src_ids.numel() == 0:
        return
    rows = src_cache[src_ids.to(src_cache.device).long()]
    # Asynchronous only towards a GPU (stream-ordered before its next kernel); a copy to the CPU
    # must be complete when this returns, since the CPU reads it next.
    to_gpu = dst_cache.device.type == "cuda"
    dst_cache[dst_ids.to(dst_cache.device).long()] = rows.to(dst_cache.device, non_blocking=to_gpu)
