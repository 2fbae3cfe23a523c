"""Triton paged decode (interpreter) against the torch reference."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shunter.kernels import ops as kernels
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


def test_small_batches_fill_the_machine_under_a_graph_wide_block_table():
    """Under CUDA graphs the block table spans max_model_len (131,072 tokens for Llama 3.2): one
    sequence of 2,048 tokens must still spread over many SMs, not one slice per KV head."""
    ops = _decode_ops()
    splits = ops.choose_num_splits(num_seqs=1, num_kv_heads=8, max_tokens=131072, block_n=64, num_sms=132)
    assert splits == 33
    assert ops.active_splits(2048, splits, block_n=64) == 16  # 8 kv heads x 16 slices = 128 programs
    assert ops.active_splits(8192, splits, block_n=64) == 32
    assert ops.active_splits(100, splits, block_n=64) == 1  # two tiles: too short to split
    assert ops.active_splits(5000, 1, block_n=64) == 1


def test_decode_with_a_wide_block_table_and_empty_slices():
    """Slices are cut from each sequence's own context: with a table 40 blocks wide, the short
    sequences use a few slices and leave the rest empty (their partials are never read)."""
    contexts = [300, 7, 64]
    paged = make_paged(contexts, 2, 64, 16, torch.float32, seed=3)
    gen = torch.Generator().manual_seed(3)
    extra = torch.randint(0, paged.k_cache.shape[0], (len(contexts), 40 - paged.block_tables.shape[1]), generator=gen)
    tables = torch.cat([paged.block_tables, extra.to(torch.int32)], dim=1)
    q = torch.randn(len(contexts), 4, 64, generator=gen)
    out = _decode_ops().paged_attention_decode(q, paged.k_cache, paged.v_cache, tables, paged.context_lens,
                                               num_splits=12, block_n=16)
    ref = reference.paged_attention_decode(q, *paged.clean(), tables, paged.context_lens)
    assert_close(out, ref, torch.float32)
    assert [_decode_ops().active_splits(n, 12, 16) for n in contexts] == [10, 1, 2]


def test_arguments_that_change_per_step_are_not_specialized(monkeypatch):
    """Triton compiles a new variant when an integer argument changes between ==1, divisible by
    16 and neither; the block table's stride (its width) and the split count change from step to
    step, so they must not be specialized on (checked on the compiled kernels' parameters)."""
    monkeypatch.delenv("TRITON_INTERPRET")
    ops = kernels.load_triton_kernels(interpret=False)
    per_step = {"stride_bts", "num_splits", "num_q_heads"}
    checked = 0
    for fn in (ops["triton_decode"]._decode_split_kernel, ops["triton_decode"]._decode_merge_kernel,
               ops["triton_prefill"]._prefill_kernel):
        for param in fn.params:
            if param.name in per_step:
                assert param.do_not_specialize, f"{fn.__name__}: {param.name} is specialized on"
                checked += 1
    assert checked == 5


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


def test_compiled_variants_counts_binaries_of_loaded_kernels(monkeypatch):
    """What a benchmark compares before and after its timed run (none compile in the interpreter)."""
    kernels.triton_kernels()
    assert kernels.compiled_variants() == 0
    fake_kernel = type("JIT", (), {"device_caches": {0: ({"key-a": 1, "key-b": 2}, None), 1: ({"key-a": 3}, None)}})()
    monkeypatch.setattr(_decode_ops(), "_fake_kernel", fake_kernel, raising=False)
    assert kernels.compiled_variants() == 3


def test_reference_decode_attends_length_groups_each_padded_to_its_own_longest(monkeypatch):
    """The CPU engine's decode: sequences of spread lengths are attended in groups of similar
    length (a gather padded to each group's longest, not everyone's), with the same result as a
    per-sequence softmax over exactly its own tokens."""
    rng = torch.Generator().manual_seed(7)
    contexts = torch.randint(1, 300, (37,), generator=rng).tolist()
    paged = make_paged(contexts, 2, 64, 16, torch.float32, seed=3)
    k_cache, v_cache = paged.clean()
    q = torch.randn(len(contexts), 8, 64, generator=rng)
    gathered: list[tuple[int, int]] = []
    gather = reference._gather_kv

    def spy(cache, block_tables, max_len):
        gathered.append((block_tables.shape[0], max_len))
        return gather(cache, block_tables, max_len)

    monkeypatch.setattr(reference, "_gather_kv", spy)
    out = reference.paged_attention_decode(q, k_cache, v_cache, paged.block_tables, paged.context_lens)
    groups = gathered[::2]  # k then v per group
    assert len(groups) == reference.DECODE_GROUPS and sum(n for n, _ in groups) == len(contexts)
    assert sum(n * m for n, m in groups) < 0.75 * len(contexts) * max(contexts)  # padding saved
    assert max(m for _, m in groups) == max(contexts)
    for s, n in enumerate(contexts):  # each sequence: its own tokens only, GQA (4 query heads per KV head)
        ids = paged.block_tables[s, : (n + 15) // 16].long()
        k = k_cache[ids].reshape(-1, 2, 64)[:n].repeat_interleave(4, dim=1)
        v = v_cache[ids].reshape(-1, 2, 64)[:n].repeat_interleave(4, dim=1)
        weights = torch.softmax(torch.einsum("hd,thd->ht", q[s], k) / 8.0, dim=-1)
        torch.testing.assert_close(out[s], torch.einsum("ht,thd->hd", weights, v), rtol=1e-4, atol=1e-5)
