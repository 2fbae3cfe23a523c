"""Paged-attention prefill in Triton: ragged causal attention over paged KV.

Sequence s owns queries `cu_seqlens_q[s]:cu_seqlens_q[s+1]`, the last positions of its
`context_lens[s]` cached tokens, so one launch serves whole prompts, chunked prefill, prefix-cache
hits and one-token decodes mixed in. Grid `(query tiles, Hq)`: a program takes BLOCK_M queries of
one sequence and one head and walks that sequence's KV blocks with an online softmax, up to its
last query's position. Tiles are mapped to sequences on the device (a searchsorted over the
cumulative tile counts), and the grid is bounded by shapes alone, so there is no host sync.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from shunter.kernels import triton_common as common
from shunter.kernels.triton_common import kv_offsets, softmax_step

INTERPRETED = common.INTERPRETED


@triton.jit(do_not_specialize=["stride_bts"])  # the block table's width changes every step
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, cu_q_ptr, ctx_ptr, tile_seq_ptr, cu_tiles_ptr, out_ptr,
    scale_log2,
    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_bts, stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr,
):
    tile = tl.program_id(0)
    head = tl.program_id(1)
    kvh = head // GROUP
    seq = tl.load(tile_seq_ptr + tile)
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    ctx = tl.load(ctx_ptr + seq)
    m_start = (tile - tl.load(cu_tiles_ptr + seq)) * BLOCK_M  # past q_len for the grid's spare tiles

    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    m_mask = offs_m < q_len
    d_mask = offs_d < HEAD_DIM
    q_pos = ctx - q_len + offs_m  # position of each query in its sequence
    rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    q = q.to(k_ptr.dtype.element_ty)
    # Keys up to the tile's last query; a spare tile walks none.
    kv_end = tl.where(m_start < q_len, tl.minimum(ctx, ctx - q_len + m_start + BLOCK_M), 0)

    m_i = tl.full([BLOCK_M], common.NEG_INIT, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bt_row = bt_ptr + seq.to(tl.int64) * stride_bts
    for n0 in range(0, kv_end, BLOCK_N):
        pos = n0 + offs_n
        in_ctx = pos < kv_end
        offs = kv_offsets(bt_row, pos, in_ctx, stride_kb, stride_kt, PAGE)[:, None] + kvh * stride_kh + offs_d[None, :]
        kv_mask = in_ctx[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + offs, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=kv_mask, other=0.0)
        valid = in_ctx[None, :] & (pos[None, :] <= q_pos[:, None])
        m_i, l_i, acc = softmax_step(q, k, v, valid, m_i, l_i, acc, scale_log2, DOT_F32)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_ptrs = out_ptr + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def _tiles(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) by head size, keeping shared memory under ~100 KB (float32
    caches take half the query rows). A tile may cut across KV blocks: tokens are gathered singly."""
    wide = dtype == torch.float32
    if head_dim > 128:
        return (16 if wide else 32), 32, 8
    return (32 if wide else 64), 64, 4


def paged_attention_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Same contract as `reference.paged_attention_prefill`; `block_m`/`block_n` override the tiles."""
    common.check_cache(k_cache, v_cache)
    T, Hq, D = q.shape
    _, page, Hkv, Dk = k_cache.shape
    if Dk != D or Hq % Hkv:
        raise ValueError(f"q {tuple(q.shape)} does not fit a cache with {Hkv} kv heads of dim {Dk}")
    q = q if q.stride(-1) == 1 else q.contiguous()
    out = torch.empty(T, Hq, D, dtype=q.dtype, device=q.device)
    S = cu_seqlens_q.numel() - 1
    if T == 0 or S == 0:
        return out
    scale = D ** -0.5 if scale is None else scale
    default_m, default_n, num_warps = _tiles(D, k_cache.dtype)
    block_m, block_n = block_m or default_m, block_n or default_n
    # Each sequence needs cdiv(q_len, BLOCK_M) tiles; in all at most cdiv(T, BLOCK_M) + S - 1.
    cu_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32)
    tiles_per_seq = (cu_q[1:] - cu_q[:-1] + block_m - 1) // block_m
    cu_tiles = torch.zeros(S + 1, dtype=torch.int32, device=q.device)
    torch.cumsum(tiles_per_seq, 0, dtype=torch.int32, out=cu_tiles[1:])
    max_tiles = triton.cdiv(T, block_m) + S - 1
    tile_ids = torch.arange(max_tiles, dtype=torch.int32, device=q.device)
    tile_seq = (torch.searchsorted(cu_tiles, tile_ids, right=True) - 1).clamp_(0, S - 1).to(torch.int32)
    _prefill_kernel[(max_tiles, Hq)](
        q, k_cache, v_cache, block_tables, cu_q, context_lens, tile_seq, cu_tiles, out,
        scale * common.LOG2E,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=Hq // Hkv, HEAD_DIM=D, PAGE=page,
        BLOCK_M=block_m, BLOCK_D=common.pow2(D), BLOCK_N=block_n, DOT_F32=common.dot_in_f32(k_cache.dtype),
        num_warps=num_warps,
    )
    return out
