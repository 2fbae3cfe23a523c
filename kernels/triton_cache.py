"""KV-cache writes (Triton) and block copies between pools (one batched transfer per call)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from shunter.kernels import triton_common as common

INTERPRETED = common.INTERPRETED


@triton.jit
def _write_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_cb, stride_ct, stride_ch,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h < NUM_HEADS)[:, None] & (offs_d < HEAD_DIM)[None, :]
    if slot >= 0:  # slot -1: a padding token, nothing to store
        t = token.to(tl.int64)
        k = tl.load(key_ptr + t * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
        v = tl.load(value_ptr + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
        dst = (slot // PAGE) * stride_cb + (slot % PAGE) * stride_ct + offs_h[:, None] * stride_ch + offs_d[None, :]
        tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Same contract as `reference.write_kv_cache`: one program per token, all its heads at once."""
    common.check_cache(k_cache, v_cache)
    T, H, D = key.shape
    if T == 0:
        return
    key = key if key.stride(-1) == 1 else key.contiguous()
    value = value if value.stride(-1) == 1 else value.contiguous()
    block_h, block_d = common.pow2(H), common.pow2(D)
    _write_kv_kernel[(T,)](
        key, value, k_cache, v_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1), *k_cache.stride()[:3],
        NUM_HEADS=H, HEAD_DIM=D, PAGE=k_cache.shape[1], BLOCK_H=block_h, BLOCK_D=block_d,
        num_warps=4 if block_h * block_d <= 4096 else 8,
    )


def _is_range(ids: torch.Tensor) -> bool:
    """Whether CPU `ids` are consecutive ascending (then the destination is one contiguous slice)."""
    n = ids.numel()
    return n == 1 or bool((ids[1:] - ids[:-1] == 1).all())


def copy_blocks(src_cache: torch.Tensor, dst_cache: torch.Tensor, src_ids: torch.Tensor, dst_ids: torch.Tensor) -> None:
    """`dst_cache[dst_ids] = src_cache[src_ids]` as one gather and one transfer.

    Device to host (swap out): gather on the device, then one non-blocking copy into the pinned
    pool when the destination blocks are consecutive (it may not have landed when this returns:
    the caller records an event and waits on it before the CPU reads the pool, see
    `replica/host_fence.py`); otherwise into pinned staging, which is waited for before the
    host-side scatter. Host to device (swap in): gather into pinned staging,
    one non-blocking copy up, scatter on the device (stream-ordered, no wait). Device to device:
    gather, copy, scatter.
    """
    if src_ids.numel() == 0:
        return
    src_dev, dst_dev = src_cache.device, dst_cache.device
    src_idx = src_ids.to(src_dev, torch.long)
    if src_dev.type != "cuda" and dst_dev.type != "cuda":
        dst_cache.index_copy_(0, dst_ids.to(dst_dev, torch.long), src_cache.index_select(0, src_idx))
        return
    if src_dev.type == "cuda" and dst_dev.type == "cpu":
        rows = src_cache.index_select(0, src_idx)
        cpu_ids = dst_ids.cpu().long()
        if dst_cache.is_pinned() and _is_range(cpu_ids):
            first = int(cpu_ids[0])
            dst_cache[first:first + cpu_ids.numel()].copy_(rows, non_blocking=True)
            return
        staging = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        staging.copy_(rows, non_blocking=True)
        torch.cuda.current_stream(src_dev).synchronize()
        dst_cache.index_copy_(0, cpu_ids, staging.to(dst_cache.dtype))
        return
    if src_dev.type == "cpu":
        pin = torch.cuda.is_available()
        rows = torch.empty((src_idx.numel(), *src_cache.shape[1:]), dtype=src_cache.dtype, pin_memory=pin)
        torch.index_select(src_cache, 0, src_idx, out=rows)
    else:
        rows = src_cache.index_select(0, src_idx)
    rows = rows.to(dst_dev, dst_cache.dtype, non_blocking=True)
    dst_cache.index_copy_(0, dst_ids.to(dst_dev, torch.long), rows)
