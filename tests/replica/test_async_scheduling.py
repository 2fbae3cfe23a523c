"""Async scheduling over the scripted fake runner (tier 1): step N+1 is scheduled and launched
before step N's tokens are read back, with placeholders for them. Greedy tokens equal the
reference either way, under preemption (recompute and swap), migration and cancellation; with
no request stopping before its length, the two modes run the very same steps."""
from __future__ import annotations

import random

import pytest

from shunter import SamplingParams
from shunter.replica.output_collector import OutputCollector
from shunter.replica.request import PLACEHOLDER
from tests.replica.fakes import finished_outputs, make_engine, prompt, reference_output, run_to_completion

SCHEDULING = pytest.mark.parametrize("async_scheduling", [True, False], ids=["async", "sync"])


def _steps(engine) -> list[list[tuple[str, int, int]]]:
    return [[(s.request.request_id, s.start, s.num_new_tokens) for s in out.scheduled] for out in engine.runner.steps]


def _load(engine, rng: random.Random, n: int, ignore_eos: bool, min_tokens: int = 1) -> dict[str, list[int]]:
    expected = {}
    shared = prompt(16, 99)
    for i in range(n):
        p = (shared if rng.random() < 0.4 else []) + prompt(rng.randint(1, 50), i)
        if not ignore_eos and rng.random() < 0.3:
            p[-1] = 999  # the fake model answers 999 with EOS: a stop at the first token
        max_tokens = rng.randint(min_tokens, 30)
        engine.add_request(f"r{i}", p, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=ignore_eos))
        expected[f"r{i}"] = reference_output(p, max_tokens, ignore_eos=ignore_eos)
    return expected


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_without_early_stops_async_runs_the_same_steps_as_sync(mode):
    """Requests that end by length: their last token is known to be last before it is read
    back, so they leave before the next schedule, as they do synchronously."""
    runs = {}
    for async_scheduling in (True, False):
        rng = random.Random(mode)
        engine = make_engine(num_blocks=16, num_cpu_blocks=64 if mode == "swap" else 0, preemption_mode=mode,
                             max_num_batched_tokens=48, max_num_seqs=6, async_scheduling=async_scheduling)
        expected = _load(engine, rng, 12, ignore_eos=True, min_tokens=20)
        assert run_to_completion(engine) == expected
        assert engine.stats().num_preemptions > 0 and engine.stats().kv_blocks_in_use == 0
        runs[async_scheduling] = _steps(engine)
    assert runs[True] == runs[False]


@SCHEDULING
@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_random_workloads_with_stops_arrivals_aborts_and_migrations_keep_the_tokens(async_scheduling, mode):
    rng = random.Random(f"{mode}-{async_scheduling}")
    for trial in range(6):
        engine = make_engine(num_blocks=rng.randint(16, 40), num_cpu_blocks=64 if mode == "swap" else 0,
                             preemption_mode=mode, max_num_batched_tokens=rng.choice([16, 64, 256]),
                             max_num_seqs=rng.choice([2, 4, 8]), async_scheduling=async_scheduling)
        other = make_engine(num_blocks=64, async_scheduling=async_scheduling)
        expected = _load(engine, rng, rng.randint(4, 10), ignore_eos=False)
        done: dict[str, list[int]] = {}
        aborted: set[str] = set()
        collector = OutputCollector()
        for _ in range(rng.randint(0, 12)):  # run a while, aborting and moving requests as it goes
            done.update({rid: o.outputs[0].token_ids for rid, o in finished_outputs(engine, collector).items()})
            live = sorted(engine.scheduler.requests)
            if live and rng.random() < 0.2:
                rid = rng.choice(live)
                out = engine.abort_request(rid)
                assert out.finish_reason == "abort" and out.num_output_tokens >= len(engine_tokens(collector, rid))
                aborted.add(rid)
            elif live and rng.random() < 0.3:
                state = engine.export_request(rng.choice(live))
                assert state is not None and PLACEHOLDER not in state.output_token_ids
                other.import_request(state)
        done.update(run_to_completion(engine))
        done.update(run_to_completion(other))
        for rid in aborted:
            assert expected.pop(rid)[: len(engine_tokens(collector, rid))] == engine_tokens(collector, rid)
        assert {rid: done[rid] for rid in expected} == expected
        assert engine.stats().kv_blocks_in_use == 0 and other.stats().kv_blocks_in_use == 0
        assert engine.kv.num_free_cpu_blocks == engine.kv.num_cpu_blocks


def engine_tokens(collector: OutputCollector, request_id: str) -> list[int]:
    pending = collector.pending.get(request_id)
    return pending.output.outputs[0].token_ids if pending else []


def test_an_early_stop_costs_async_one_step_and_changes_no_token():
    """The EOS of step N is seen after step N+1 was launched: that step computed one token for
    nothing, and the output is the same."""
    outs = {}
    for async_scheduling in (True, False):
        engine = make_engine(async_scheduling=async_scheduling)
        engine.add_request("stop", [3, 4, 999], SamplingParams(max_tokens=5, temperature=0))
        engine.add_request("long", prompt(6, 1), SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
        collector = OutputCollector()
        outs[async_scheduling] = finished_outputs(engine, collector, steps=8)
        decodes = [s for out in engine.runner.steps for s in out.scheduled if s.request.request_id == "stop"]
        assert len(decodes) == (2 if async_scheduling else 1)
    for out in outs.values():
        assert out["stop"].outputs[0].token_ids == [0] and out["stop"].outputs[0].finish_reason == "stop"
    assert {k: o.outputs[0].token_ids for k, o in outs[True].items()} == \
        {k: o.outputs[0].token_ids for k, o in outs[False].items()}


def test_abort_with_a_token_on_its_way_counts_only_what_it_reported():
    engine = make_engine(async_scheduling=True)
    engine.add_request("a", prompt(8, 1), SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
    reported = [t for _ in range(4) for o in engine.step() for t in o.new_token_ids]
    assert engine.scheduler.requests["a"].output_token_ids[-1] == PLACEHOLDER  # step 4's token is on its way
    out = engine.abort_request("a")
    assert out.num_output_tokens == len(reported) == 3 and out.new_token_ids == []
    assert engine.step() == [] and not engine.has_unfinished_requests()  # its token is dropped with it
    assert engine.stats().kv_blocks_in_use == 0


def test_a_deadline_with_a_token_on_its_way_reports_the_token_with_the_end():
    engine = make_engine(async_scheduling=True, max_num_seqs=1)  # fake steps take 10 ms
    engine.add_request("d", prompt(4, 1), SamplingParams(max_tokens=50, temperature=0, ignore_eos=True,
                                                           deadline_ms=120))
    tokens, reason = [], None
    while engine.has_unfinished_requests():
        for o in engine.step():
            tokens += o.new_token_ids
            reason = o.finish_reason or reason
    assert reason == "deadline" and 0 < len(tokens) < 50
    assert tokens == reference_output(prompt(4, 1), len(tokens), ignore_eos=True)


def test_length_stops_leave_before_the_next_schedule_and_free_their_seat():
    """One seat: the waiting request is admitted in the step right after the first one's last
    token, in both modes (its seat frees before that token is read back)."""
    for async_scheduling in (True, False):
        engine = make_engine(async_scheduling=async_scheduling, max_num_seqs=1)
        engine.add_request("first", prompt(4, 1), SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
        engine.add_request("second", prompt(4, 2), SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
        run_to_completion(engine)
        assert [[rid for rid, _, _ in step] for step in _steps(engine)] == [["first"]] * 3 + [["second"]] * 3


@SCHEDULING
def test_each_output_counts_the_tokens_reported_so_far(async_scheduling):
    """`num_output_tokens` never counts a token still on its way (the router checks it)."""
    engine = make_engine(async_scheduling=async_scheduling, max_num_batched_tokens=32)
    for i in range(5):
        engine.add_request(f"r{i}", prompt(10 + 9 * i, i), SamplingParams(max_tokens=12, temperature=0))
    counts: dict[str, int] = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            counts[o.request_id] = counts.get(o.request_id, 0) + len(o.new_token_ids)
            assert o.num_output_tokens == counts[o.request_id]


def test_by_default_an_engine_overlaps_its_steps_only_where_a_launch_returns_early():
    """On the CPU a launch computes the step, so async scheduling would only hold each token
    back a step: by default an engine there steps synchronously, and a request's first token
    comes out of the step that made it. The fake runner plays a GPU and overlaps."""
    from shunter import LLM

    cpu = LLM(model="random:tiny", device="cpu", num_kv_blocks=16).engine
    assert not cpu.runner.launch_returns_early and not cpu.async_scheduling
    cpu.add_request("a", [5, 6, 7], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    assert [len(o.new_token_ids) for o in cpu.step()] == [1]
    asked = LLM(model="random:tiny", device="cpu", num_kv_blocks=16, async_scheduling=True).engine
    assert asked.async_scheduling
    asked.add_request("a", [5, 6, 7], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    assert asked.step() == []  # its token is read back after the next step is launched
    assert make_engine().async_scheduling and not make_engine(async_scheduling=False).async_scheduling
