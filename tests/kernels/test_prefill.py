"""Triton paged prefill (interpreter) against the torch reference: whole prompts, chunks after a
cached prefix, and one-token decodes mixed into the same call."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shunter.kernels import ops as kernels
from shunter.kernels import reference
from tests.kernels.paged import assert_close, cu_seqlens, make_paged

HEADS = [(1, 1), (2, 1), (1, 4), (2, 2)]


def _prefill_ops():
    ops = kernels.triton_kernels()
    assert ops is not None, "the interpreter is not in effect"
    return ops["triton_prefill"]


def _check(seqs, heads, head_dim, block_size, dtype, seed=0, block_m=None, block_n=None):
    """`seqs`: (context length, query length) per sequence, queries being the context's last tokens."""
    num_kv, group = heads
    contexts, q_lens = [c for c, _ in seqs], [n for _, n in seqs]
    paged = make_paged(contexts, num_kv, head_dim, block_size, dtype, seed=seed)
    cu = cu_seqlens(q_lens)
    q = torch.randn(sum(q_lens), num_kv * group, head_dim, generator=torch.Generator().manual_seed(seed)).to(dtype)
    out = _prefill_ops().paged_attention_prefill(
        q, paged.k_cache, paged.v_cache, paged.block_tables, cu, paged.context_lens, block_m=block_m, block_n=block_n
    )
    assert out.dtype == dtype and out.shape == q.shape
    ref = reference.paged_attention_prefill(q.float(), *paged.clean(), paged.block_tables, cu, paged.context_lens)
    assert_close(out, ref, dtype)


@st.composite
def sequence(draw):
    """A full prompt, a chunk after a cached prefix, or a decode step."""
    context = draw(st.integers(1, 100))
    kind = draw(st.sampled_from(["prompt", "prefix_hit", "decode"]))
    q_len = {"prompt": context, "decode": 1}.get(kind) or draw(st.integers(1, context))
    return context, q_len


@settings(max_examples=25, deadline=None)
@given(
    seqs=st.lists(sequence(), min_size=1, max_size=3),
    heads=st.sampled_from(HEADS),
    head_dim=st.sampled_from([64, 80, 96, 128]),
    block_size=st.sampled_from([8, 16, 32, 64]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    block_m=st.sampled_from([16, None]),
    seed=st.integers(0, 2**16),
)
def test_prefill_matches_reference(seqs, heads, head_dim, block_size, dtype, block_m, seed):
    _check(seqs, heads, head_dim, block_size, dtype, seed, block_m=block_m)


def test_prefill_mixed_with_decodes_and_head_dim_256():
    _check([(70, 1), (90, 40), (17, 17), (5, 1)], (1, 2), 256, 16, torch.float32, block_m=16, block_n=16)


def test_prefill_many_query_tiles_in_one_sequence():
    """Tiles of one sequence start at different positions; the last tile is partial."""
    _check([(150, 150), (40, 3)], (2, 2), 64, 8, torch.bfloat16, block_m=16, block_n=32)


def test_attention_helper_routes_chunks_to_prefill():
    seqs = [(30, 12), (9, 1)]
    paged = make_paged([c for c, _ in seqs], 1, 64, 16, torch.float32)
    cu = cu_seqlens([n for _, n in seqs])
    q = torch.randn(13, 2, 64)
    out = kernels.attention(q, paged.k_cache, paged.v_cache, paged.block_tables, cu, paged.context_lens, max_query_len=12)
    ref = reference.paged_attention_prefill(q, *paged.clean(), paged.block_tables, cu, paged.context_lens)
    assert_close(out, ref, torch.float32)
