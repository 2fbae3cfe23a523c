"""The compiled kernels on CUDA (bfloat16) against the torch reference; skipped without a GPU."""
from __future__ import annotations

import pytest
import torch

from shunter.kernels import ops as kernels
from shunter.kernels import reference
from tests.kernels.paged import assert_close, cu_seqlens, make_paged

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
BF16 = torch.bfloat16


@pytest.mark.parametrize("head_dim", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("block_size", [16, 32])
def test_decode_on_cuda(head_dim, block_size):
    contexts = [1, 17, 300, 2500]  # few long sequences: several splits
    paged = make_paged(contexts, 2, head_dim, block_size, BF16, device="cuda")
    q = torch.randn(len(contexts), 8, head_dim, device="cuda", dtype=BF16)
    assert kernels.triton_kernels(q) is not None
    out = kernels.paged_attention_decode(q, paged.k_cache, paged.v_cache, paged.block_tables, paged.context_lens)
    ref = reference.paged_attention_decode(q.float(), *paged.clean(), paged.block_tables, paged.context_lens)
    assert_close(out, ref, BF16)
    one = kernels.triton_kernels(q)["triton_decode"].paged_attention_decode(
        q, paged.k_cache, paged.v_cache, paged.block_tables, paged.context_lens, num_splits=1)
    assert_close(one, ref, BF16)


@pytest.mark.parametrize("head_dim", [80, 128, 256])
def test_prefill_mixed_on_cuda(head_dim):
    seqs = [(400, 400), (900, 130), (50, 1), (3000, 1), (77, 20)]
    paged = make_paged([c for c, _ in seqs], 2, head_dim, 16, BF16, device="cuda")
    cu = cu_seqlens([n for _, n in seqs], device="cuda")
    q = torch.randn(int(cu[-1]), 4, head_dim, device="cuda", dtype=BF16)
    out = kernels.paged_attention_prefill(q, paged.k_cache, paged.v_cache, paged.block_tables, cu, paged.context_lens)
    ref = reference.paged_attention_prefill(q.float(), *paged.clean(), paged.block_tables, cu, paged.context_lens)
    assert_close(out, ref, BF16)


def test_write_kv_cache_on_cuda():
    slots = torch.tensor([5, -1, 70, 3, -1, 127], device="cuda")
    key = torch.randn(6, 8, 128, device="cuda", dtype=BF16)
    value = torch.randn(6, 8, 128, device="cuda", dtype=BF16)
    caches = [torch.zeros(8, 16, 8, 128, device="cuda", dtype=BF16) for _ in range(2)]
    expected = [c.clone() for c in caches]
    kernels.write_kv_cache(key, value, *caches, slots)
    reference.write_kv_cache(key, value, *expected, slots)
    assert torch.equal(caches[0], expected[0]) and torch.equal(caches[1], expected[1])


@pytest.mark.parametrize("dst_ids", [[4, 5, 6], [6, 0, 3]])  # consecutive (direct) and scattered (staged)
def test_copy_blocks_swap_round_trip(dst_ids):
    gpu = torch.randn(8, 16, 2, 64, device="cuda", dtype=BF16)
    cpu = torch.zeros(8, 16, 2, 64, dtype=BF16, pin_memory=True)
    src_ids, dst = torch.tensor([1, 7, 2]), torch.tensor(dst_ids)
    kernels.copy_blocks(gpu, cpu, src_ids, dst)  # swap out
    torch.cuda.synchronize()
    assert torch.equal(cpu[dst], gpu[src_ids.cuda()].cpu())
    back = torch.zeros_like(gpu)
    kernels.copy_blocks(cpu, back, dst, torch.tensor([0, 3, 5]))  # swap in
    torch.cuda.synchronize()
    assert torch.equal(back[torch.tensor([0, 3, 5], device="cuda")], gpu[src_ids.cuda()])
    moved = torch.zeros_like(gpu)
    kernels.copy_blocks(gpu, moved, src_ids, torch.tensor([2, 1, 0]))  # device to device
    assert torch.equal(moved[:3], gpu[torch.tensor([2, 7, 1], device="cuda")])
