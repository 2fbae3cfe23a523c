"""Paged-attention decode in Triton: one query token per sequence, split-K (flash-decoding).

Grid `(S, Hkv, splits)`: a program takes one sequence, one KV head with all the query heads that
share it (GQA/MQA: the group is padded to 16 rows so QK and PV are tensor-core dots), and one
slice of the context. With one split it writes the output directly; with several, each writes its
normalized partial output plus (max, sum) and a second kernel merges the splits. The grid depends
only on tensor shapes, never on values, so a launch needs no host sync and can be captured in a
CUDA graph.

The split count comes from the batch shape (enough programs to fill the SMs); each program cuts
its own sequence's actual context into that many slices of whole tiles (at least
MIN_TILES_PER_SPLIT each), and slices past a short context read nothing. Sizing the slices from
the block table's width instead would make them as long as the widest possible context: under
CUDA graphs the static table spans `max_model_len` (131,072 tokens for Llama 3.2), and a batch of
one would keep a handful of SMs busy.

Integer arguments that change from step to step (the block table's row stride, the split count)
are not specialized on, so a new width never compiles a new variant in the middle of a run.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from shunter.kernels import triton_common as common
from shunter.kernels.triton_common import kv_offsets, softmax_step

INTERPRETED = common.INTERPRETED
MAX_SPLITS = 64
MIN_TILES_PER_SPLIT = 2  # a split shorter than this costs more in the merge than it saves


@triton.jit
def _tiles_per_split(ctx, num_splits, BLOCK_N: tl.constexpr, MIN_TILES: tl.constexpr):
    """Whole tiles per slice when a context of `ctx` tokens is cut into at most `num_splits` slices."""
    return tl.maximum(tl.cdiv(tl.cdiv(ctx, BLOCK_N), num_splits), MIN_TILES)


@triton.jit(do_not_specialize=["num_splits", "num_q_heads", "stride_bts"])
def _decode_split_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, out_ptr, part_o_ptr, part_ml_ptr,
    scale_log2, num_splits, num_q_heads,
    stride_qs, stride_qh, stride_kb, stride_kt, stride_kh, stride_bts, stride_os, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, SINGLE: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr,
    MIN_TILES: tl.constexpr,
):
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(ctx_ptr + seq)
    if SINGLE:
        start = 0
        end = ctx
    else:
        span = _tiles_per_split(ctx, num_splits, BLOCK_N, MIN_TILES) * BLOCK_N
        start = split * span
        end = tl.minimum(start + span, ctx)  # start >= end: a slice past the context, nothing read

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kvh * GROUP + offs_g
    gd_mask = (offs_g < GROUP)[:, None] & (offs_d < HEAD_DIM)[None, :]
    q = tl.load(q_ptr + seq.to(tl.int64) * stride_qs + heads[:, None] * stride_qh + offs_d[None, :], mask=gd_mask, other=0.0)
    q = q.to(k_ptr.dtype.element_ty)

    m_i = tl.full([BLOCK_G], common.NEG_INIT, tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    bt_row = bt_ptr + seq.to(tl.int64) * stride_bts
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + offs_n
        valid = pos < end
        offs = kv_offsets(bt_row, pos, valid, stride_kb, stride_kt, PAGE)[:, None] + kvh * stride_kh + offs_d[None, :]
        kv_mask = valid[:, None] & (offs_d < HEAD_DIM)[None, :]
        k = tl.load(k_ptr + offs, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=kv_mask, other=0.0)
        m_i, l_i, acc = softmax_step(q, k, v, valid[None, :], m_i, l_i, acc, scale_log2, DOT_F32)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if SINGLE:
        o_ptrs = out_ptr + seq.to(tl.int64) * stride_os + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=gd_mask)
    else:
        # part_o [S, Hq, splits, BLOCK_D], part_ml [S, Hq, splits, 2], both contiguous float32.
        # An empty slice stores nothing: the merge reads only the slices its context uses.
        row = (seq.to(tl.int64) * num_q_heads + heads) * num_splits + split
        g_mask = offs_g < tl.where(start < end, GROUP, 0)
        tl.store(part_o_ptr + row[:, None] * BLOCK_D + offs_d[None, :], out,
                 mask=g_mask[:, None] & (offs_d < HEAD_DIM)[None, :])
        tl.store(part_ml_ptr + row * 2, m_i, mask=g_mask)
        tl.store(part_ml_ptr + row * 2 + 1, l_i, mask=g_mask)


@triton.jit(do_not_specialize=["num_splits"])
def _decode_merge_kernel(
    part_o_ptr, part_ml_ptr, ctx_ptr, out_ptr, num_splits, stride_os, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_SPLITS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    MIN_TILES: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_SPLITS)
    offs_d = tl.arange(0, BLOCK_D)
    ctx = tl.load(ctx_ptr + seq)
    used = tl.cdiv(tl.cdiv(ctx, BLOCK_N), _tiles_per_split(ctx, num_splits, BLOCK_N, MIN_TILES))
    s_mask = offs_s < used
    row = (seq.to(tl.int64) * tl.num_programs(1) + head) * num_splits + offs_s
    m = tl.load(part_ml_ptr + row * 2, mask=s_mask, other=common.NEG_INIT)
    l = tl.load(part_ml_ptr + row * 2 + 1, mask=s_mask, other=0.0)
    o = tl.load(part_o_ptr + row[:, None] * BLOCK_D + offs_d[None, :],
                mask=s_mask[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    w = l * tl.exp2(m - tl.max(m, 0))
    total = tl.sum(w, 0)
    out = tl.sum(w[:, None] * o, 0) / tl.where(total > 0, total, 1.0)
    o_ptrs = out_ptr + seq.to(tl.int64) * stride_os + head * stride_oh + offs_d
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


_SM_COUNT: dict[int, int] = {}


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 8  # the interpreter: a nominal small machine, so moderate batches still split
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_tokens: int, block_n: int, num_sms: int) -> int:
    """Enough programs for about two waves over the SMs; no more slices than the longest context
    the block table can hold has tiles for (MIN_TILES_PER_SPLIT each)."""
    programs = num_seqs * num_kv_heads
    tiles = triton.cdiv(max(max_tokens, 1), block_n)
    if programs >= num_sms:
        return 1
    want = triton.cdiv(2 * num_sms, programs)
    return max(1, min(want, tiles // MIN_TILES_PER_SPLIT, MAX_SPLITS))


def active_splits(context_len: int, num_splits: int, block_n: int) -> int:
    """How many of `num_splits` slices read part of a `context_len`-token context (the kernels'
    own arithmetic, for benchmarks and tests)."""
    if num_splits <= 1:
        return 1
    tiles = triton.cdiv(context_len, block_n)
    per_split = max(triton.cdiv(tiles, num_splits), MIN_TILES_PER_SPLIT)
    return triton.cdiv(tiles, per_split)


def _tile_n(head_dim: int) -> int:
    """Tokens per step; a tile may cut across KV blocks, since tokens are gathered one by one."""
    return 64 if head_dim <= 128 else 32


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float | None = None,
    *,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Same contract as `reference.paged_attention_decode`; `num_splits`/`block_n` override the heuristics."""
    common.check_cache(k_cache, v_cache)
    S, Hq, D = q.shape
    _, page, Hkv, Dk = k_cache.shape
    if Dk != D or Hq % Hkv:
        raise ValueError(f"q {tuple(q.shape)} does not fit a cache with {Hkv} kv heads of dim {Dk}")
    q = q if q.stride(-1) == 1 else q.contiguous()
    out = torch.empty(S, Hq, D, dtype=q.dtype, device=q.device)
    if S == 0:
        return out
    scale = D ** -0.5 if scale is None else scale
    group = Hq // Hkv
    block_d = common.pow2(D)
    block_n = block_n or _tile_n(D)
    if num_splits is None:
        num_splits = choose_num_splits(S, Hkv, block_tables.shape[1] * page, block_n, _num_sms(q.device))
    num_splits = max(1, min(num_splits, MAX_SPLITS))
    if num_splits > 1:
        part_o = torch.empty(S, Hq, num_splits, block_d, dtype=torch.float32, device=q.device)
        part_ml = torch.empty(S, Hq, num_splits, 2, dtype=torch.float32, device=q.device)
    else:
        part_o = part_ml = out  # unused
    _decode_split_kernel[(S, Hkv, num_splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, part_o, part_ml,
        scale * common.LOG2E, num_splits, Hq,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, HEAD_DIM=D, SINGLE=num_splits == 1, PAGE=page,
        BLOCK_G=max(16, common.pow2(group)), BLOCK_D=block_d, BLOCK_N=block_n,
        DOT_F32=common.dot_in_f32(k_cache.dtype), MIN_TILES=MIN_TILES_PER_SPLIT,
        num_warps=4 if block_d <= 128 else 8,
    )
    if num_splits > 1:
        # BLOCK_SPLITS is fixed (not the next power of two of this call's count): one variant for all batches.
        _decode_merge_kernel[(S, Hq)](
            part_o, part_ml, context_lens, out, num_splits, out.stride(0), out.stride(1),
            HEAD_DIM=D, BLOCK_SPLITS=MAX_SPLITS, BLOCK_D=block_d, BLOCK_N=block_n, MIN_TILES=MIN_TILES_PER_SPLIT,
            num_warps=4 if block_d <= 128 else 8,
        )
    return out
