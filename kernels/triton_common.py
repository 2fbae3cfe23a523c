"""Pieces the Triton attention kernels share: paged KV tile loads and the online-softmax step.

Importing this module decorates kernels: whether they are compiled for a GPU or run in Triton's
interpreter is decided by `TRITON_INTERPRET` at that moment (see `shunter.kernels.ops`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

INTERPRETED = bool(triton.knobs.runtime.interpret)
LOG2E = 1.4426950408889634
NEG_INIT = -1.0e30  # finite start of the running max: a fully masked row never computes inf - inf


def pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k_cache.shape != v_cache.shape or k_cache.dim() != 4:
        raise ValueError(f"k/v caches must be [blocks, block_size, kv_heads, head_dim], got {tuple(k_cache.shape)}")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1:
        raise ValueError("k/v caches must share strides and be contiguous in head_dim")


def dot_in_f32(cache_dtype: torch.dtype) -> bool:
    """Whether QK and PV take float32 operands. 16-bit caches feed tensor cores directly (float32
    accumulation), except in the interpreter, whose `tl.dot` reads bfloat16 as raw uint16 bits."""
    return cache_dtype == torch.float32 or (INTERPRETED and cache_dtype == torch.bfloat16)


@triton.jit
def kv_offsets(bt_row_ptr, pos, valid, stride_block, stride_tok, PAGE: tl.constexpr):
    """Element offsets (int64) of tokens `pos` of one sequence in a paged cache, less head/dim parts."""
    blk = tl.load(bt_row_ptr + pos // PAGE, mask=valid, other=0).to(tl.int64)
    return blk * stride_block + (pos % PAGE).to(tl.int64) * stride_tok


@triton.jit
def softmax_step(q, k, v, valid, m_i, l_i, acc, scale_log2, DOT_F32: tl.constexpr):
    """Fold one KV tile into the running (max, sum, acc) of each query row; scores in log2 units.
    float32 operands are multiplied exactly ("ieee"), not in TF32."""
    if DOT_F32:
        q = q.to(tl.float32)
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    DOT_PREC: tl.constexpr = "ieee" if DOT_F32 else "tf32"
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale_log2
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return m_new, l_i, acc
