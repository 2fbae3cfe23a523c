"""Log-probabilities in the engine: the sampler's, and the prompt's computed in the prefill.

Over the null model (`shunter.testing.null_model`: all mass on one token, known exactly) the
values at every position are checked under chunked prefill, prefix caching, preemption by
recompute and swap, async and sync scheduling, and migration; the step still reads the device
once. On the real model they are checked against HF's log-softmax (`test_logprobs_smollm2.py`).
"""
from __future__ import annotations

import math
import random

import pytest
import torch

from shunter import SamplingParams
from shunter.logprobs import MAX_LOGPROBS, TokenLogprobs
from shunter.replica.engine_config import EngineConfig
from shunter.replica.engine_protocol import EngineOutput
from shunter.replica.logprobs import prompt_spans
from shunter.replica.request import Request
from shunter.replica.sampler import logprobs_of
from shunter.replica.scheduler import ScheduledRequest
from shunter.testing.null_model import VOCAB, null_engine, null_next, null_reference

PATHS = {
    "persistent-async": dict(persistent_batch=True, async_scheduling=True),
    "persistent-sync": dict(persistent_batch=True, async_scheduling=False),
    "packed": dict(persistent_batch=False, async_scheduling=False),
}
NORM = math.log(math.e + VOCAB - 1)  # the null model's logits are one-hot: log-sum-exp of one 1 and VOCAB-1 zeros


# ---- the sampler's arithmetic ---------------------------------------------------------------------
def test_logprobs_of_is_log_softmax_with_ranks_and_the_top_k():
    torch.manual_seed(0)
    logits = torch.randn(5, 300) * 4
    tokens = torch.tensor([0, 17, 299, 5, 42])
    got = logprobs_of(logits, tokens, 7)
    want = logits.log_softmax(-1)
    assert torch.allclose(got.logprobs, want.gather(1, tokens[:, None]).squeeze(1), atol=1e-5)
    top = want.topk(7, dim=-1)
    assert torch.equal(got.top_ids, top.indices) and torch.allclose(got.top_logprobs, top.values, atol=1e-5)
    order = want.argsort(-1, descending=True)
    assert got.ranks.tolist() == [int((order[i] == t).nonzero()) + 1 for i, t in enumerate(tokens.tolist())]
    none = logprobs_of(logits, tokens, 0)
    assert none.top_ids.shape == (5, 0) and torch.equal(none.logprobs, got.logprobs)


@pytest.mark.parametrize("field", ["logprobs", "prompt_logprobs"])
@pytest.mark.parametrize("value", [-1, MAX_LOGPROBS + 1, 2.0, True])
def test_sampling_params_refuse_a_logprobs_count_out_of_range_naming_it(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be an integer in \[0, {MAX_LOGPROBS}\]"):
        SamplingParams(**{field: value})
    assert getattr(SamplingParams(**{field: MAX_LOGPROBS}), field) == MAX_LOGPROBS


def test_prompt_spans_cover_the_prompt_positions_each_chunk_computes():
    """Position q predicts prompt token q + 1: a chunk of [start, end) owes [start, min(end, P - 1));
    rows count every scheduled token before it. Once an output token exists, none are owed."""
    asks = Request("a", list(range(10)), SamplingParams(prompt_logprobs=2), 0.0)
    plain = Request("b", list(range(6)), SamplingParams(), 0.0)
    spans = prompt_spans([ScheduledRequest(plain, 0, 6, []), ScheduledRequest(asks, 4, 4, [])])
    assert [(s.request, s.start, s.count, s.row) for s in spans] == [(asks, 4, 4, 6)]
    assert [(s.start, s.count) for s in prompt_spans([ScheduledRequest(asks, 8, 2, [])])] == [(8, 1)]
    asks.output_token_ids.append(3)
    assert prompt_spans([ScheduledRequest(asks, 0, 11, [])]) == []


# ---- the engine over the null model ---------------------------------------------------------------
def _engine(path: str, num_cpu_blocks: int = 0, **settings):
    settings = {"num_kv_blocks": 64, "max_num_seqs": 8, "max_num_batched_tokens": 64, "check_invariants": True,
                **PATHS[path], **settings}
    return null_engine(EngineConfig(model="null", **settings), num_cpu_blocks=num_cpu_blocks)


def _expected(previous: int, position: int, token: int) -> tuple[float, int, int]:
    """The null model's (logprob, rank, top token) of `token` after `previous` at `position`."""
    top = null_next(previous, position)
    return (1.0 if token == top else 0.0) - NORM, 1 if token == top else 2, top


def _check(prompt: list[int], tokens: list[int], out: list[TokenLogprobs], prompt_lps: list | None,
           k: int) -> None:
    seq = prompt + tokens
    assert len(out) == len(tokens)
    for j, p in enumerate(out):
        q = len(prompt) + j
        lp, rank, top = _expected(seq[q - 1], q - 1, seq[q])
        assert (p.token_id, p.rank) == (seq[q], rank) and abs(p.logprob - lp) < 1e-5
        assert len(p.top_ids) == len(p.top_logprobs) == k and p.top_ids[:1] == (top,)[:k]
    if prompt_lps is not None:
        assert len(prompt_lps) == len(prompt) and prompt_lps[0] is None
        for q in range(1, len(prompt)):
            lp, rank, top = _expected(prompt[q - 1], q - 1, prompt[q])
            p = prompt_lps[q]
            assert (p.token_id, p.rank, p.top_ids[:1]) == (prompt[q], rank, (top,)[:len(p.top_ids)])
            assert abs(p.logprob - lp) < 1e-5


def _run(engine) -> dict[str, dict]:
    got: dict[str, dict] = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            g = got.setdefault(o.request_id, {"tokens": [], "logprobs": [], "prompt": None, "outputs": 0})
            g["tokens"] += o.new_token_ids
            g["outputs"] += 1
            if o.new_logprobs is not None:
                g["logprobs"] += o.new_logprobs
            if o.prompt_logprobs is not None:
                assert g["prompt"] is None, "the prompt's log-probabilities come once"
                g["prompt"] = o.prompt_logprobs
    return got


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_every_position_under_chunking_caching_and_preemption(path, mode):
    """Prompts that share a prefix (cached), chunks of 16 tokens, a pool small enough to preempt:
    every output and prompt position holds the null model's exact log-probabilities, once."""
    rng = random.Random(path + mode)
    engine = _engine(path, num_cpu_blocks=64 if mode == "swap" else 0, num_kv_blocks=20, max_num_batched_tokens=16,
                     preemption_mode=mode)
    shared = [rng.randrange(1, VOCAB) for _ in range(32)]
    asked = {}
    for i in range(10):
        prompt = shared + [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 30))]
        n = rng.randint(15, 25)
        k = (None, 0, 3)[i % 3]
        pk = (None, 2)[i % 2]
        engine.add_request(f"r{i}", prompt, SamplingParams(max_tokens=n, temperature=(0, 0.9)[i % 2], seed=i,
                                                           ignore_eos=True, logprobs=k, prompt_logprobs=pk))
        asked[f"r{i}"] = (prompt, k, pk)
    got = _run(engine)
    stats = engine.stats()
    assert stats.num_preemptions > 0 and stats.prefix_hits > 0 and stats.kv_blocks_in_use == 0
    for rid, (prompt, k, pk) in asked.items():
        g = got[rid]
        if k is None:
            assert g["logprobs"] == []
        else:
            _check(prompt, g["tokens"], g["logprobs"], g["prompt"], k)
        assert (g["prompt"] is not None) == (pk is not None)
        if pk is not None:
            _check(prompt, [], [], g["prompt"], 0)


def test_a_prompt_that_asks_takes_no_prefix_hit_until_its_prompt_logprobs_are_out():
    engine = _engine("persistent-async")
    prompt = list(range(1, 40))
    engine.add_request("warm", prompt, SamplingParams(max_tokens=2, temperature=0))
    _run(engine)
    engine.add_request("asks", prompt, SamplingParams(max_tokens=2, temperature=0, prompt_logprobs=0))
    engine.add_request("plain", prompt, SamplingParams(max_tokens=2, temperature=0))
    got = _run(engine)
    _check(prompt, [], [], got["asks"]["prompt"], 0)
    assert engine.kv.prefix_hits == 32  # "plain" hit two blocks; "asks" computed its prompt


def test_no_logprobs_are_computed_when_no_request_asks(monkeypatch):
    import shunter.replica.model_runner as runner_module

    calls = []
    original = runner_module.compute_prompt_logprobs
    monkeypatch.setattr(runner_module, "compute_prompt_logprobs", lambda *a: calls.append(1) or original(*a))
    engine = _engine("persistent-async")
    pendings = []
    execute = engine.runner.execute
    monkeypatch.setattr(engine.runner, "execute", lambda out: pendings.append(execute(out)) or pendings[-1])
    for i in range(4):
        engine.add_request(f"r{i}", [1 + i] * 20, SamplingParams(max_tokens=5, temperature=0))
    got = _run(engine)
    assert all(g["logprobs"] == [] and g["prompt"] is None for g in got.values())
    assert pendings and all(p.logprobs is None and p.prompt is None for p in pendings) and not calls
    engine.add_request("asks", [7] * 20, SamplingParams(max_tokens=5, temperature=0, logprobs=1, prompt_logprobs=1))
    _run(engine)
    assert pendings[-1].logprobs is not None and calls


def test_logprobs_add_no_read_of_the_device_but_the_readback(monkeypatch):
    """With log-probabilities asked (sampled and prompt), the values reach the host only through
    the step's readback (its one wait) and the host lists made of what it copied back."""
    import sys

    engine = _engine("persistent-async")
    rng = random.Random(1)
    for i in range(6):
        params = SamplingParams(max_tokens=10, temperature=rng.choice([0.0, 0.8]), seed=i, ignore_eos=True,
                                logprobs=rng.choice([0, 5]), prompt_logprobs=rng.choice([None, 3]))
        engine.add_request(f"r{i}", [rng.randrange(1, VOCAB) for _ in range(rng.randint(3, 30))], params)
    readers = []
    for name in ("tolist", "numpy", "cpu", "item"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            caller = sys._getframe(1).f_code
            readers.append(("/".join(caller.co_filename.rsplit("/", 2)[-2:]), caller.co_name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    assert set(readers) == {("replica/readback.py", "tokens"), ("replica/logprobs.py", "<genexpr>")}
    assert engine.runner.readback.waits <= steps


def test_migration_carries_the_logprobs_and_the_prompt_is_finished_on_the_target():
    """Moved mid-prefill (its prompt's log-probabilities half done) and again mid-decode, with a
    step in flight each time: the tokens the export drained go with the state, and the router
    sends them from it (as `_emit` at a commit does); every position is exact, and sent once."""
    prompt = [random.Random(3).randrange(1, VOCAB) for _ in range(60)]
    params = SamplingParams(max_tokens=12, temperature=0, logprobs=2, prompt_logprobs=1, ignore_eos=True)
    a, b = (_engine("persistent-async", max_num_batched_tokens=16) for _ in range(2))
    stream = {"tokens": [], "logprobs": [], "prompt": None}

    def take(outs) -> None:
        for o in outs:
            stream["tokens"] += o.new_token_ids
            stream["logprobs"] += o.new_logprobs
            if o.prompt_logprobs is not None:
                assert stream["prompt"] is None
                stream["prompt"] = o.prompt_logprobs

    def move(src, dst) -> None:
        state = src.export_request("m")
        sent = len(stream["tokens"])
        take([EngineOutput("m", state.output_token_ids[sent:], len(state.output_token_ids),
                           new_logprobs=state.output_logprobs[sent:],
                           prompt_logprobs=state.prompt_logprobs if sent == 0 and state.output_token_ids else None)])
        dst.import_request(state)

    a.add_request("m", prompt, params)
    take(a.step() + a.step())
    request = a.scheduler.requests["m"]
    assert 0 < request.num_computed_tokens < len(prompt) and request.prompt_logprobs[1] is not None
    move(a, b)
    while len(b.scheduler.requests["m"].output_token_ids) < 5:
        take(b.step())
    assert b._flight is not None  # a step is in flight: the export drains it
    move(b, a)
    while a.has_unfinished_requests():
        take(a.step())
    assert stream["tokens"] == null_reference(prompt, 12)
    _check(prompt, stream["tokens"], stream["logprobs"], stream["prompt"], 2)


@pytest.mark.parametrize("path", PATHS)
def test_a_request_that_ends_on_its_first_token_still_gets_its_prompts(path):
    """max_tokens=1 ends before the step's readback (its token on the way is its last): the
    prompt's log-probabilities, computed in that step's prefill (one chunk or the last of several),
    still come with its token, as an evaluation's `echo` asks."""
    engine = _engine(path, max_num_batched_tokens=16)
    prompts = {"short": list(range(3, 12)), "chunked": list(range(5, 45))}
    for rid, prompt in prompts.items():
        engine.add_request(rid, prompt, SamplingParams(max_tokens=1, temperature=0, logprobs=1, prompt_logprobs=1))
    got = _run(engine)
    for rid, prompt in prompts.items():
        assert len(got[rid]["tokens"]) == 1
        _check(prompt, got[rid]["tokens"], got[rid]["logprobs"], got[rid]["prompt"], 1)
