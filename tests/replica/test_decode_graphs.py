"""Decode steps through the CUDA-graph path's padded static buffers give the eager path's tokens.

On the CPU nothing is captured: the same padding runs eagerly, which is what is checked here
(padded rows must neither disturb real rows nor write any KV). Capture itself is `gpu`-marked."""
from __future__ import annotations

import pytest
import torch

from shunter import LLM, SamplingParams
from shunter.replica.decode_graphs import graph_batch_sizes
from shunter.replica.packing import Chunk, pack

PROMPTS = [[5 + i] * (3 + 7 * i) for i in range(5)]  # ragged: 3 to 31 tokens, 1 or 2 blocks


def test_batch_sizes_cover_every_batch_up_to_the_seat_limit():
    assert graph_batch_sizes(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert graph_batch_sizes(5) == [1, 2, 4, 5]
    assert graph_batch_sizes(1) == [1]


def _greedy(llm: LLM) -> list[list[int]]:
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]


def test_padded_decode_equals_eager_decode():
    eager = _greedy(LLM(model="random:tiny", device="cpu", max_num_seqs=8, num_kv_blocks=64, check_invariants=True))
    llm = LLM(model="random:tiny", device="cpu", max_num_seqs=8, num_kv_blocks=64, check_invariants=True)
    runner = llm.engine.runner
    runner.use_decode_graphs(max_num_seqs=8, capture=False)
    graphs, sizes_used = runner.decode_graphs, []
    run = graphs.run
    graphs.run = lambda batch: sizes_used.append(batch.input_ids.numel()) or run(batch)
    assert _greedy(llm) == eager
    assert 5 in sizes_used and any(n not in graphs.sizes for n in sizes_used)  # padded batches did run


def test_padded_rows_write_no_kv_and_leave_real_rows_exact():
    """Three decodes padded to eight rows: only the three new slots change, and the hidden
    states equal an eager forward of the unpadded batch on the same cache."""
    runner = LLM(model="random:tiny", device="cpu", num_kv_blocks=16).engine.runner
    runner.use_decode_graphs(max_num_seqs=8, capture=False)
    runner.decode_graphs.sizes = [8]
    torch.manual_seed(0)
    for k, v in runner.kv_caches:
        k.normal_(), v.normal_()
    chunks = [Chunk([11], 20, [3, 5], True), Chunk([12], 4, [7], True), Chunk([13], 33, [1, 2, 9], True)]
    batch = pack(chunks, runner.block_size)
    before = [(k.clone(), v.clone()) for k, v in runner.kv_caches]
    with torch.inference_mode():
        eager = runner.model(batch.input_ids, batch.positions, runner.kv_caches, batch.attn)
    after_eager = [(k.clone(), v.clone()) for k, v in runner.kv_caches]
    for (k, v), (k0, v0) in zip(runner.kv_caches, before):
        k.copy_(k0), v.copy_(v0)
    assert runner.decode_graphs.fits(batch)
    padded = runner.decode_graphs.run(batch)
    torch.testing.assert_close(padded, eager)
    new_slots = set(batch.attn.slot_mapping.tolist())
    for (k, v), (ke, ve), (k0, v0) in zip(runner.kv_caches, after_eager, before):
        for cache, eager_cache, old in ((k, ke, k0), (v, ve, v0)):
            per_slot = (cache != old).flatten(2).any(-1).flatten()  # [num_blocks * block_size]
            assert set(torch.nonzero(per_slot).flatten().tolist()) == new_slots
            torch.testing.assert_close(cache, eager_cache)


@pytest.mark.gpu
def test_cuda_graph_decode_equals_eager_on_cuda():
    kwargs = dict(model="random:tiny", device="cuda", dtype="float32", max_num_seqs=8, num_kv_blocks=64)
    assert _greedy(LLM(enforce_eager=True, **kwargs)) == _greedy(LLM(**kwargs))


@pytest.mark.gpu
def test_a_run_captures_only_the_batch_sizes_it_replays():
    llm = LLM(model="random:tiny", device="cuda", dtype="float32", max_num_seqs=64, num_kv_blocks=256)
    graphs = llm.engine.runner.decode_graphs
    assert graphs is not None and graphs.graphs == {}  # nothing captured at start-up
    replayed, run = [], graphs.run

    def recording(batch):
        replayed.append(next(n for n in graphs.sizes if n >= batch.input_ids.numel()))
        return run(batch)

    graphs.run = recording
    _greedy(llm)
    assert set(graphs.graphs) == set(replayed) and len(graphs.graphs) < len(graphs.sizes)


@pytest.mark.gpu
def test_capturing_every_size_up_front_keeps_the_tokens():
    """What `bench engine` does before its timed run: every size captured on rows that store nothing."""
    kwargs = dict(model="random:tiny", device="cuda", dtype="float32", max_num_seqs=8, num_kv_blocks=64)
    eager = _greedy(LLM(enforce_eager=True, **kwargs))
    llm = LLM(**kwargs)
    graphs = llm.engine.runner.decode_graphs
    graphs.capture_all()
    assert set(graphs.graphs) == set(graphs.sizes)
    assert _greedy(llm) == eager
