"""The persistent batch and the step inputs gathered from it, without a model: the same inputs
as packing every step from lists (`packing.pack`, the oracle), written only where requests
joined, left or grew."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from shunter import SamplingParams
from shunter.mathutil import cdiv
from shunter.replica.input_batch import InputBatch
from shunter.replica.packing import Chunk, pack
from shunter.replica.request import PLACEHOLDER, Request
from shunter.replica.scheduler import ScheduledRequest
from shunter.replica.step_inputs import SEGMENTS, Staging, gather

BS = 4
VOCAB = 100


def _request(rid: str, prompt_len: int, out_len: int, rng: random.Random, **params) -> Request:
    req = Request(rid, [rng.randrange(1, VOCAB) for _ in range(prompt_len)], SamplingParams(**params), 0.0)
    req.output_token_ids = [rng.randrange(1, VOCAB) for _ in range(out_len)]
    return req


def _schedule(req: Request, start: int, n: int, blocks: list[int]) -> ScheduledRequest:
    req.num_computed_tokens = start
    return ScheduledRequest(req, start, n, blocks[: cdiv(start + n, BS)])


def _buffers(max_tokens: int = 256, max_seqs: int = 16) -> tuple[dict[str, np.ndarray], np.ndarray]:
    caps = {"t": max_tokens, "s": max_seqs, "s1": max_seqs + 1}
    arrays = {name: np.zeros(caps[cap], dtype) for name, (dtype, cap) in SEGMENTS.items()}
    return arrays, np.zeros(max_seqs * 64, np.int32)


def _assert_same_as_pack(batch: InputBatch, scheduled: list[ScheduledRequest]) -> None:
    step = batch.update(scheduled, lambda rid: 0)
    out, table = _buffers()
    z = gather(batch, step, out, table)
    chunks = [Chunk(s.request.token_slice(s.start, s.start + s.num_new_tokens), s.start, s.block_ids, s.samples)
              for s in scheduled]
    want = pack(chunks, BS)
    T, S = z.tokens, z.seqs
    assert out["input_ids"][:T].tolist() == want.input_ids.tolist()
    assert out["positions"][:T].tolist() == want.positions.tolist()
    assert out["slot_mapping"][:T].tolist() == want.attn.slot_mapping.tolist()
    assert out["cu_seqlens"][: S + 1].tolist() == want.attn.cu_seqlens_q.tolist()
    assert out["context_lens"][:S].tolist() == want.attn.context_lens.tolist()
    assert out["logits_indices"][: z.sampled].tolist() == want.logits_indices.tolist()
    assert z.max_query_len == want.attn.max_query_len
    got_table = table[: S * z.width].reshape(S, z.width)
    for i, s in enumerate(scheduled):  # past a row's own blocks the kernels read nothing: only those must agree
        assert got_table[i, : len(s.block_ids)].tolist() == s.block_ids


def test_gathered_inputs_equal_packed_inputs_over_random_steps():
    rng = random.Random(0)
    batch = InputBatch(max_rows=16, max_model_len=64, block_size=BS, vocab_size=VOCAB)
    free_blocks = list(range(400))
    rng.shuffle(free_blocks)
    live: dict[str, tuple[Request, list[int]]] = {}
    for step in range(60):
        while len(live) < 10:  # requests join: fresh prompts and ones resumed with outputs
            rid = f"r{step}-{len(live)}"
            req = _request(rid, rng.randint(1, 30), rng.choice([0, 0, 3]), rng)
            live[rid] = (req, [free_blocks.pop() for _ in range(cdiv(64, BS))])
        scheduled = []
        for req, blocks in rng.sample(list(live.values()), rng.randint(1, len(live))):
            behind = req.num_tokens - req.num_computed_tokens
            n = rng.randint(1, behind)
            scheduled.append(_schedule(req, req.num_computed_tokens, n, blocks))
        _assert_same_as_pack(batch, scheduled)
        for s in scheduled:  # the step ran: tokens computed, a token sampled where the chunk ended
            req = s.request
            req.num_computed_tokens = s.start + s.num_new_tokens
            if req.num_computed_tokens == req.num_tokens:
                req.output_token_ids.append(rng.randrange(1, VOCAB))
        for rid in [rid for rid, (r, _) in live.items() if r.num_tokens >= 40 or rng.random() < 0.05]:
            req, blocks = live.pop(rid)  # finished or preempted: the row goes
            batch.remove(rid)
            free_blocks += blocks


def test_a_decode_step_writes_what_grew_and_nothing_else():
    rng = random.Random(1)
    batch = InputBatch(max_rows=8, max_model_len=256, block_size=BS, vocab_size=VOCAB)
    reqs = [(_request(f"d{i}", 10 + i, 0, rng), list(range(64 * i, 64 * i + 64))) for i in range(8)]
    batch.update([_schedule(r, 0, r.num_tokens, b) for r, b in reqs], lambda rid: 0)
    assert (batch.writes.rows, batch.writes.tokens) == (8, 0)
    blocks_before = batch.writes.blocks
    for _ in range(12):
        for r, _ in reqs:
            r.output_token_ids.append(rng.randrange(1, VOCAB))
        grew = sum(cdiv(r.num_tokens, BS) > cdiv(r.num_tokens - 1, BS) for r, _ in reqs)
        tokens, blocks = batch.writes.tokens, batch.writes.blocks
        batch.update([_schedule(r, r.num_tokens - 1, 1, b) for r, b in reqs], lambda rid: 0)
        assert batch.writes.rows == 8  # nobody joined: no row rewritten
        assert batch.writes.tokens - tokens == 8  # each request's newest token
        assert batch.writes.blocks - blocks == grew  # a block id where a request crossed into a new block
    assert batch.writes.blocks > blocks_before


def test_a_request_that_leaves_and_comes_back_gets_its_row_again():
    rng = random.Random(2)
    batch = InputBatch(max_rows=2, max_model_len=64, block_size=BS, vocab_size=VOCAB)
    a, b = _request("a", 5, 0, rng), _request("b", 5, 0, rng)
    batch.update([_schedule(a, 0, 5, [1, 2]), _schedule(b, 0, 5, [3, 4])], lambda rid: 0)
    batch.remove("a")
    again = _request("a", 7, 2, rng)  # same id, a new request (migrated back, or re-submitted)
    step = batch.update([_schedule(again, 0, 9, [5, 6, 7])], lambda rid: 0)
    assert batch.writes.rows == 3 and batch.token_ids[step.rows[0], :9].tolist() == again.all_token_ids
    with pytest.raises(RuntimeError, match="no free row"):
        batch.update([_schedule(_request("c", 3, 0, rng), 0, 3, [8])], lambda rid: 0)


def test_a_placeholder_input_is_taken_from_the_last_step_samples():
    """Async scheduling: the token sampled in the step before is still on the device. Its input
    row is filled from that step's sampled rows; the row learns the token when a step reads it
    from the host."""
    rng = random.Random(3)
    batch = InputBatch(max_rows=4, max_model_len=64, block_size=BS, vocab_size=VOCAB)
    a, b = _request("a", 6, 0, rng), _request("b", 3, 0, rng)
    first = batch.update([_schedule(a, 0, 6, [0, 1]), _schedule(b, 0, 3, [2])], lambda rid: 0)
    assert first.samples.tolist() == [True, True]
    a.output_token_ids.append(PLACEHOLDER)
    b.output_token_ids.append(PLACEHOLDER)
    step = batch.update([_schedule(b, 3, 1, [2]), _schedule(a, 6, 1, [0, 1])], lambda rid: 0)
    assert (step.fill_seqs.tolist(), step.fill_from.tolist()) == ([0, 1], [1, 0])  # b was sampled second, a first
    out, table = _buffers()
    z = gather(batch, step, out, table)
    assert z.fills == 2 and out["fill_dst"][:2].tolist() == [0, 1] and out["fill_src"][:2].tolist() == [1, 0]
    a.output_token_ids[-1] = 42  # read back; then a decodes again with a placeholder after it
    a.output_token_ids.append(PLACEHOLDER)
    tokens = batch.writes.tokens
    step = batch.update([_schedule(a, 7, 1, [0, 1])], lambda rid: 0)
    assert step.fill_seqs.tolist() == [0] and batch.writes.tokens == tokens  # its one input is on the device: no write
    a.output_token_ids[-1] = 43
    step = batch.update([_schedule(a, 6, 2, [0, 1])], lambda rid: 0)  # a chunk that reads both from the host
    assert batch.token_ids[step.rows[0], 6:8].tolist() == [42, 43] and step.fill_seqs.tolist() == []


def test_gathered_inputs_equal_packed_inputs_with_tokens_on_the_device():
    """Async scheduling over random steps: a step's sampled tokens stay placeholders until the
    step after it has been prepared (some come back first, as a synchronous step's do). Once
    the device fills each placeholder input from the last step's samples, the inputs are those
    packed from the real tokens; exactly the placeholder inputs are filled, from the right row."""
    rng = random.Random(6)
    batch = InputBatch(max_rows=16, max_model_len=128, block_size=BS, vocab_size=VOCAB)
    free_blocks = list(range(800))
    rng.shuffle(free_blocks)
    live: dict[str, tuple[Request, list[int]]] = {}
    on_device: dict[str, int] = {}  # request id -> the real value of its trailing placeholder
    last_sampled: list[str] = []  # request ids the last step sampled, in its order
    fills = 0
    for step_no in range(120):
        while len(live) < 10:
            rid = f"r{step_no}-{len(live)}"
            live[rid] = (_request(rid, rng.randint(1, 30), rng.choice([0, 0, 3]), rng),
                         [free_blocks.pop() for _ in range(cdiv(128, BS))])
        scheduled = []
        for req, blocks in rng.sample(list(live.values()), rng.randint(1, len(live))):
            behind = req.num_tokens - req.num_computed_tokens
            scheduled.append(_schedule(req, req.num_computed_tokens, rng.randint(1, behind), blocks))
        step = batch.update(scheduled, lambda rid: 0)
        out, table = _buffers()
        z = gather(batch, step, out, table)
        cu = out["cu_seqlens"]
        for i, j in zip(step.fill_seqs.tolist(), step.fill_from.tolist()):  # the device's fill
            rid = scheduled[i].request.request_id
            assert last_sampled[j] == rid
            out["input_ids"][cu[i + 1] - 1] = on_device[rid]
        fills += len(step.fill_seqs)
        real = [[on_device[s.request.request_id] if t == PLACEHOLDER else t
                 for t in s.request.token_slice(s.start, s.start + s.num_new_tokens)] for s in scheduled]
        assert step.fill_seqs.tolist() == [i for i, s in enumerate(scheduled)
                                  if s.request.token_slice(s.start, s.start + s.num_new_tokens)[-1] == PLACEHOLDER]
        want = pack([Chunk(r, s.start, s.block_ids, s.samples) for r, s in zip(real, scheduled)], BS)
        assert out["input_ids"][: z.tokens].tolist() == want.input_ids.tolist()
        assert out["positions"][: z.tokens].tolist() == want.positions.tolist()
        # Launched: tokens computed, each sampled request gets a placeholder; then the step before
        # completes (its placeholders get their values), and a few of this step's come back too.
        before, on_device = on_device, {}
        last_sampled = []
        for s in scheduled:
            req = s.request
            req.num_computed_tokens = s.start + s.num_new_tokens
            if req.num_computed_tokens == req.num_tokens:
                last_sampled.append(req.request_id)
                req.output_token_ids.append(PLACEHOLDER)
                on_device[req.request_id] = rng.randrange(1, VOCAB)
        for rid, token in before.items():  # last, or just before this step's own placeholder
            live[rid][0].output_token_ids[-2 if rid in on_device else -1] = token
        for rid in [rid for rid in on_device if rng.random() < 0.2]:  # came back before the next step
            live[rid][0].output_token_ids[-1] = on_device.pop(rid)
        for rid in [rid for rid, (r, _) in live.items() if r.num_tokens >= 100 or rng.random() < 0.03]:
            free_blocks += live.pop(rid)[1]  # finished or preempted: the row goes, its token with it
            batch.remove(rid)
            on_device.pop(rid, None)
    assert fills > 100


def _layout(step) -> list[list[int]]:
    return [a.tolist() for a in (step.rows, step.starts, step.num_new, step.samples, step.fill_seqs, step.fill_from)]


def test_a_step_of_the_same_decodes_is_the_last_layout_one_token_on():
    """Async decodes of the same requests step after step (`SchedulerOutput.decodes`): the batch
    moves the last layout one position on and writes only the block ids of rows that reach a new
    block. A twin batch that walks every row each step gives the same layouts and cells; a join,
    a leave or a new order goes back to the walk."""
    rng = random.Random(7)
    fast, walk = (InputBatch(max_rows=16, max_model_len=256, block_size=BS, vocab_size=VOCAB) for _ in range(2))
    free_blocks = list(range(2000))
    rng.shuffle(free_blocks)
    live: dict[str, tuple[Request, list[int]]] = {}
    order: list[str] = []
    walks = [0]
    inner = fast._update_rows
    fast._update_rows = lambda *a: (walks.__setitem__(0, walks[0] + 1), inner(*a))[1]
    for step_no in range(200):
        if len(live) < 12 and rng.random() < 0.05:  # a request joins: its prompt in one chunk
            rid = f"r{step_no}"
            live[rid] = (_request(rid, rng.randint(1, 30), 0, rng), [free_blocks.pop() for _ in range(cdiv(256, BS))])
            order.append(rid)
        if rng.random() < 0.03:
            rng.shuffle(order)  # a policy that reorders its running requests
        scheduled = [_schedule(live[rid][0], live[rid][0].num_computed_tokens,
                               live[rid][0].num_tokens - live[rid][0].num_computed_tokens, live[rid][1])
                     for rid in order]
        decodes = [s.request for s in scheduled] if all(s.num_new_tokens == 1 for s in scheduled) else None
        if not scheduled:
            continue
        got, want = fast.update(scheduled, lambda rid: 0, decodes), walk.update(scheduled, lambda rid: 0)
        assert _layout(got) == _layout(want)
        (out, table), (out_walk, table_walk) = _buffers(512), _buffers(512)
        gather(fast, got, out, table)
        gather(walk, want, out_walk, table_walk)
        assert all((out[k] == out_walk[k]).all() for k in out) and (table == table_walk).all()
        for s in scheduled:  # launched; the step before completes after this one was prepared
            req = s.request
            req.num_computed_tokens = s.start + s.num_new_tokens
            for i, t in enumerate(req.output_token_ids):
                if t == PLACEHOLDER:
                    req.output_token_ids[i] = rng.randrange(1, VOCAB)
            req.output_token_ids.append(PLACEHOLDER)
        for rid in [rid for rid, (r, _) in live.items() if r.num_tokens >= 200 or rng.random() < 0.01]:
            free_blocks += live.pop(rid)[1]
            order.remove(rid)
            fast.remove(rid)
            walk.remove(rid)
    assert walks[0] < 60 and fast.writes.blocks == walk.writes.blocks > 100  # most steps moved on; blocks written


def test_sampling_rows_and_flags():
    rng = random.Random(4)
    batch = InputBatch(max_rows=4, max_model_len=64, block_size=BS, vocab_size=VOCAB)
    greedy = _request("g", 4, 0, rng, temperature=0.0)
    hot = _request("h", 4, 2, rng, temperature=0.7, top_k=5)
    step = batch.update([_schedule(greedy, 0, 4, [0]), _schedule(hot, 0, 6, [1, 2])], lambda rid: {"h": 99}.get(rid, 0))
    out, table = _buffers()
    z = gather(batch, step, out, table)
    assert not z.all_greedy and z.filtered
    assert out["temperature"][:2].tolist() == pytest.approx([0.0, 0.7])
    assert out["top_k"][:2].tolist() == [VOCAB, 5] and out["seeds"][:2].tolist() == [0, 99]
    assert out["draws"][:2].tolist() == [0, 2]  # the output index each one draws


def test_staging_on_the_cpu_hands_the_model_views_of_one_buffer():
    rng = random.Random(5)
    batch = InputBatch(max_rows=4, max_model_len=64, block_size=BS, vocab_size=VOCAB)
    staging = Staging(max_tokens=32, max_seqs=4, max_blocks=16, device=torch.device("cpu"))
    a = _request("a", 9, 0, rng)
    inputs = staging.stage(batch, batch.update([_schedule(a, 0, 9, [3, 4, 5])], lambda rid: 0))
    assert inputs.batch.input_ids.tolist() == a.prompt_token_ids
    assert inputs.batch.attn.block_tables.tolist() == [[3, 4, 5]]
    storage = inputs.batch.input_ids.untyped_storage().data_ptr()
    assert inputs.batch.attn.block_tables.untyped_storage().data_ptr() == storage  # no copy on the CPU
