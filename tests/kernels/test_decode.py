"""Triton paged decode (interpreter) against the torch reference."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shunter import kernels
from shunter.kernels import reference
from tests.kernels.paged import assert_close, make_paged

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HEADS = [(1, 1), (2, 1), (1, 4), (2, 4), (1, 8)]  # (kv heads, q heads per kv head): MHA, GQA, MQA


def _decode_ops():
    ops = kernels.triton_kernels()
    assert ops is not None, "the interpreter is not in effect"
    return ops["triton_decode"]


def _check(contexts, heads, head_dim, block_size, dtype, num_splits, seed=0, block_n=None):
    num_kv, group = heads
    paged = make_paged(contexts, num_kv, head_dim, block_size, dtype, seed=seed)
    q = torch.randn(len(contexts), num_kv * group, head_dim, generator=torch.Generator().manual_seed(seed)).to(dtype)
    out = _decode_ops().paged_attention_decode(
        q, paged.k_cache, paged.v_cache, paged.block_tables, paged.context_lens, num_splits=num_splits, block_n=block_n
    )
    assert out.dtype == dtype and out.shape == q.shape
    ref = reference.paged_attention_decode(q.float(), *paged.clean(), paged.block_tables, paged.context_lens)
    assert_close(out, ref, dtype)


@settings(max_examples=25, deadline=None)
@given(
    contexts=st.lists(st.integers(1, 140), min_size=1, max_size=3),
    heads=st.sampled_from(HEADS),
    head_dim=st.sampled_from([64, 80, 96, 128, 256]),
    block_size=st.sampled_from([8, 16, 32, 64]),
    dtype=st.sampled_from(DTYPES),
    num_splits=st.sampled_from([1, 3, None]),
    seed=st.integers(0, 2**16),
)
def test_decode_matches_reference(contexts, heads, head_dim, block_size, dtype, num_splits, seed):
    _check(contexts, heads, head_dim, block_size, dtype, num_splits, seed)


@pytest.mark.parametrize("head_dim", [80, 96])
def test_decode_padded_head_dims_with_many_splits(head_dim):
    """Non-power-of-two head dims, small tiles so every split walks several, some splits empty."""
    _check([5, 130, 64], (2, 4), head_dim, 16, torch.float32, num_splits=6, block_n=16)


def test_split_count_heuristic():
    choose = _decode_ops().choose_num_splits
    assert choose(num_seqs=256, num_kv_heads=8, max_tokens=8192, block_n=64, num_sms=132) == 1
    few = choose(num_seqs=2, num_kv_heads=8, max_tokens=8192, block_n=64, num_sms=132)
    assert few > 1 and 2 * 8 * few >= 132
    assert choose(num_seqs=2, num_kv_heads=8, max_tokens=64, block_n=64, num_sms=132) == 1  # too short to split


def test_dispatch_runs_triton_under_the_interpreter(monkeypatch):
    paged = make_paged([33, 7], 2, 64, 16, torch.float32)
    q = torch.randn(2, 4, 64)
    calls = []
    module = _decode_ops()
    real = module.paged_attention_decode
    monkeypatch.setattr(module, "paged_attention_decode", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    out = kernels.attention(q, paged.k_cache, paged.v_cache, paged.block_tables, torch.tensor([0, 1, 2]),
                            paged.context_lens, max_query_len=1)
    assert calls == [1]
    ref = reference.paged_attention_decode(q, *paged.clean(), paged.block_tables, paged.context_lens)
    assert_close(out, ref, torch.float32)


def test_reference_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    assert kernels.triton_kernels(torch.zeros(1)) is None


def test_reference_without_triton(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "triton", None)  # `import triton` raises ImportError
    monkeypatch.setattr(kernels, "_triton_missing", False)
    assert kernels.triton_kernels(torch.zeros(1)) is None
    paged = make_paged([9], 1, 64, 8, torch.float32)
    q = torch.randn(1, 2, 64)
    out = kernels.paged_attention_decode(q, paged.k_cache.nan_to_num(0), paged.v_cache.nan_to_num(0),
                                         paged.block_tables, paged.context_lens)
    assert_close(out, reference.paged_attention_decode(q, *paged.clean(), paged.block_tables, paged.context_lens),
                 torch.float32)
