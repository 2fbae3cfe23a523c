"""KV-cache writes (Triton, interpreter) and block copies against the torch reference."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shunter.kernels import ops as kernels
from shunter.kernels import reference


def _cache_ops():
    """The Triton cache module itself (never the torch twin the dispatcher falls back to)."""
    ops = kernels.triton_kernels()
    assert ops is not None, "the interpreter is not in effect"
    return ops["triton_cache"]


@settings(max_examples=15, deadline=None)
@given(
    num_tokens=st.integers(1, 12),
    num_kv=st.sampled_from([1, 2, 3]),
    head_dim=st.sampled_from([64, 80, 96]),
    block_size=st.sampled_from([8, 16]),
    cache_dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    input_dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_write_kv_cache_matches_reference(num_tokens, num_kv, head_dim, block_size, cache_dtype, input_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    num_blocks = 4
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[torch.rand(num_tokens, generator=gen) < 0.3] = -1  # padding tokens (CUDA-graph batches)
    key = torch.randn(num_tokens, num_kv, head_dim, generator=gen).to(input_dtype)
    value = torch.randn(num_tokens, num_kv, head_dim, generator=gen).to(input_dtype)
    shape = (num_blocks, block_size, num_kv, head_dim)
    caches = [torch.randn(shape, generator=gen).to(cache_dtype) for _ in range(2)]
    expected = [c.clone() for c in caches]
    _cache_ops().write_kv_cache(key, value, *caches, slots)
    reference.write_kv_cache(key, value, *expected, slots)
    if input_dtype.itemsize > cache_dtype.itemsize:
        # Triton's interpreter rounds float32 down to 16 bits toward zero (a GPU rounds to nearest):
        # allow one unit in the last place.
        ulp = 2.0 ** -(7 if cache_dtype == torch.bfloat16 else 10)
        for got, want in zip(caches, expected):
            torch.testing.assert_close(got.float(), want.float(), atol=0.0, rtol=ulp)
    else:
        assert torch.equal(caches[0], expected[0]) and torch.equal(caches[1], expected[1])


def test_write_kv_cache_strided_inputs():
    """Keys sliced out of a fused QKV projection are not contiguous across tokens."""
    qkv = torch.randn(5, 3, 2, 64)
    key, value = qkv[:, 1], qkv[:, 2]
    slots = torch.tensor([3, -1, 17, 8, 0])
    caches = [torch.zeros(3, 8, 2, 64) for _ in range(2)]
    expected = [c.clone() for c in caches]
    _cache_ops().write_kv_cache(key, value, *caches, slots)
    reference.write_kv_cache(key, value, *expected, slots)
    assert torch.equal(caches[0], expected[0]) and torch.equal(caches[1], expected[1])


def test_copy_blocks_between_cpu_pools():
    ops = {"triton_cache": _cache_ops()}
    src = torch.randn(6, 4, 2, 8)
    for dst_ids in ([3, 0, 5], [1, 2, 3]):
        dst, expected = torch.zeros(7, 4, 2, 8), torch.zeros(7, 4, 2, 8)
        ids = torch.tensor([4, 1, 2]), torch.tensor(dst_ids)
        ops["triton_cache"].copy_blocks(src, dst, *ids)
        reference.copy_blocks(src, expected, *ids)
        assert torch.equal(dst, expected)
    ops["triton_cache"].copy_blocks(src, dst, torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
