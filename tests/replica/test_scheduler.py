"""Scheduler + KV cache manager + engine loop over the scripted fake runner (tier 1)."""
from __future__ import annotations

import random

import pytest

from shunter import SamplingParams
from shunter.replica.output_collector import OutputCollector
from tests.replica.fakes import finished_outputs, make_engine, prompt, reference_output, run_to_completion


def test_chunked_prefill_respects_the_token_budget():
    engine = make_engine(max_num_batched_tokens=32)
    engine.add_request("a", prompt(100, 1), SamplingParams(max_tokens=3, temperature=0))
    run_to_completion(engine)
    sizes = [[s.num_new_tokens for s in step.scheduled] for step in engine.runner.steps]
    assert sizes == [[32], [32], [32], [4], [1], [1]]


def test_a_capped_last_chunk_leaves_that_many_tokens_for_the_last_step_and_the_same_tokens():
    """P/D prefill replicas (`last_chunk_tokens`): the chunk before the last stops short, so the
    last one (computed with the first token, whose blocks a hand-off's commit carries) is small."""
    engine = make_engine(max_num_batched_tokens=32, last_chunk_tokens=8)
    engine.add_request("a", prompt(100, 1), SamplingParams(max_tokens=3, temperature=0))
    engine.add_request("b", prompt(5, 2), SamplingParams(max_tokens=2, temperature=0))  # shorter than the cap
    done = run_to_completion(engine)
    sizes = [[(s.request.request_id, s.num_new_tokens) for s in step.scheduled] for step in engine.runner.steps]
    chunks = {rid: [n for step in sizes for r, n in step if r == rid] for rid in ("a", "b")}
    assert chunks["a"] == [32, 32, 28, 8, 1, 1]  # without the cap: 32, 32, 32, 4, 1, 1
    assert chunks["b"] == [4, 1, 1]  # under the cap: only the budget cuts it
    assert done["a"] == reference_output(prompt(100, 1), 3) and done["b"] == reference_output(prompt(5, 2), 2)


def test_requests_join_and_leave_every_step():
    engine = make_engine(max_num_batched_tokens=256)
    engine.add_request("short", prompt(10, 1), SamplingParams(max_tokens=2, temperature=0))
    engine.add_request("long", prompt(10, 2), SamplingParams(max_tokens=6, temperature=0))
    engine.step()
    engine.step()  # "short" finishes here
    engine.add_request("late", prompt(5, 3), SamplingParams(max_tokens=2, temperature=0))
    engine.step()
    batch = {s.request.request_id for s in engine.runner.steps[-1].scheduled}
    assert batch == {"long", "late"}
    done = run_to_completion(engine)
    assert done["long"] == reference_output(prompt(10, 2), 6)


def test_decodes_go_before_new_prefills_within_the_budget():
    engine = make_engine(max_num_batched_tokens=20)
    engine.add_request("a", prompt(8, 1), SamplingParams(max_tokens=5, temperature=0))
    engine.step()
    engine.add_request("b", prompt(50, 2), SamplingParams(max_tokens=5, temperature=0))
    engine.step()
    step = engine.runner.steps[-1].scheduled
    assert [(s.request.request_id, s.num_new_tokens) for s in step] == [("a", 1), ("b", 19)]


def test_max_num_seqs_caps_the_running_set():
    engine = make_engine(max_num_seqs=2)
    for i in range(5):
        engine.add_request(f"r{i}", prompt(4, i), SamplingParams(max_tokens=4, temperature=0))
    engine.step()
    assert len(engine.runner.steps[-1].scheduled) == 2
    assert len(run_to_completion(engine)) == 5


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_keeps_every_output_and_leaks_no_block(mode):
    prompts = [prompt(20 + 7 * i, i) for i in range(8)]
    engine = make_engine(num_blocks=12, num_cpu_blocks=64 if mode == "swap" else 0, preemption_mode=mode, max_num_batched_tokens=64)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    done = run_to_completion(engine)
    for i, p in enumerate(prompts):
        assert done[f"r{i}"] == reference_output(p, 30, ignore_eos=True)
    stats = engine.stats()
    assert stats.num_preemptions > 0
    if mode == "swap":
        assert stats.num_swaps > 0
    assert stats.kv_blocks_in_use == 0 and engine.kv.num_free_cpu_blocks == engine.kv.num_cpu_blocks


def test_swap_falls_back_to_recompute_when_the_cpu_pool_is_full():
    engine = make_engine(num_blocks=12, num_cpu_blocks=1, preemption_mode="swap", max_num_batched_tokens=64)
    prompts = [prompt(40, i) for i in range(4)]
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
    done = run_to_completion(engine)
    assert all(done[f"r{i}"] == reference_output(p, 20, ignore_eos=True) for i, p in enumerate(prompts))
    assert engine.stats().num_recomputed_tokens > 0


def test_shared_prefix_is_served_from_the_cache():
    system = prompt(48, 99)
    engine = make_engine()
    engine.add_request("first", system + [5, 6], SamplingParams(max_tokens=2, temperature=0))
    run_to_completion(engine)
    engine.add_request("second", system + [7, 8, 9], SamplingParams(max_tokens=2, temperature=0))
    engine.step()
    assert engine.runner.steps[-1].scheduled[0].start == 48
    done = run_to_completion(engine)
    assert done["second"] == reference_output(system + [7, 8, 9], 2)
    stats = engine.stats()
    assert stats.prefix_hit_rate > 0
    assert (stats.prefix_queries, stats.prefix_hits) == (50 + 51, 48)  # tokens looked up, tokens found


def test_a_prompt_that_is_entirely_cached_still_computes_its_last_token():
    p = prompt(32, 5)
    engine = make_engine()
    for rid in ("a", "b"):
        engine.add_request(rid, p, SamplingParams(max_tokens=2, temperature=0))
        run_to_completion(engine)
    assert engine.runner.steps[-2].scheduled[0].start == 16  # one block short of the whole prompt
    assert engine.runner.steps[-2].scheduled[0].num_new_tokens == 16


def test_eos_stops_unless_ignored():
    p = [3, 4, 999]  # the fake model answers 999 with EOS
    engine = make_engine()
    engine.add_request("stop", p, SamplingParams(max_tokens=5, temperature=0))
    engine.add_request("ignore", p, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    engine.add_request("stop-id", prompt(4, 1), SamplingParams(max_tokens=5, temperature=0, stop_token_ids=[reference_output(prompt(4, 1), 2)[1]]))
    outs, collector = {}, OutputCollector()
    while engine.has_unfinished_requests():
        outs.update({rid: o.outputs[0] for rid, o in finished_outputs(engine, collector).items()})
    assert outs["stop"].token_ids == [0] and outs["stop"].finish_reason == "stop"
    assert len(outs["ignore"].token_ids) == 5 and outs["ignore"].finish_reason == "length"
    assert len(outs["stop-id"].token_ids) == 2 and outs["stop-id"].finish_reason == "stop"


def test_abort_frees_everything_and_spares_the_others():
    engine = make_engine()
    engine.add_request("keep", prompt(30, 1), SamplingParams(max_tokens=8, temperature=0))
    engine.add_request("drop", prompt(30, 2), SamplingParams(max_tokens=8, temperature=0))
    engine.step()
    out = engine.abort_request("drop")
    assert out.finish_reason == "abort"
    assert engine.abort_request("drop") is None
    done = run_to_completion(engine)
    assert done["keep"] == reference_output(prompt(30, 1), 8)
    assert engine.stats().kv_blocks_in_use == 0


@pytest.mark.parametrize(
    "tokens, params, field",
    [
        ([], SamplingParams(), "prompt"),
        ([1, 5000], SamplingParams(), "prompt_token_ids"),
        ([1, -3], SamplingParams(), "prompt_token_ids"),
        ([1] * 4000, SamplingParams(max_tokens=200), "^max_tokens: .* at most 96 fit"),
        ([1] * 4096, SamplingParams(max_tokens=1), "^prompt_token_ids: the prompt .* leaves no room"),
        ([1] * 100, SamplingParams(max_tokens=2000), "^max_tokens: .*more KV blocks .*64 blocks of 16"),
        ([1] * 1100, SamplingParams(max_tokens=1), "^prompt_token_ids: .*more KV blocks"),
        ([1, 2], SamplingParams(n=2), "^n: "),
        ([1, 2], SamplingParams(stop_token_ids=[1000]), "^stop_token_ids: "),
    ],
)
def test_bad_requests_name_the_field_and_disturb_nothing(tokens, params, field):
    engine = make_engine(num_blocks=64)
    engine.add_request("good", prompt(10, 1), SamplingParams(max_tokens=4, temperature=0))
    with pytest.raises(ValueError, match=field):
        engine.add_request("bad", tokens, params)
    assert run_to_completion(engine)["good"] == reference_output(prompt(10, 1), 4)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
     ({"top_k": -2}, "top_k"), ({"max_tokens": 0}, "max_tokens")],
)
def test_bad_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_duplicate_request_id_is_refused():
    engine = make_engine()
    engine.add_request("x", [1, 2], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="request_id"):
        engine.add_request("x", [1, 2], SamplingParams(max_tokens=2))


def test_migration_moves_kv_and_keeps_the_tokens():
    src, dst = make_engine(), make_engine()
    p = prompt(40, 3)
    src.add_request("m", p, SamplingParams(max_tokens=12, temperature=0))
    for _ in range(5):
        src.step()
    state = src.export_request("m")
    assert state is not None and state.kv is not None and state.num_computed_tokens > 40
    assert src.stats().kv_blocks_in_use == 0 and not src.has_unfinished_requests()
    dst.import_request(state)
    dst.step()
    assert dst.runner.steps[-1].scheduled[0].start == state.num_computed_tokens  # resumed, not recomputed
    assert run_to_completion(dst)["m"] == reference_output(p, 12)


def test_migration_without_kv_recomputes():
    src, dst = make_engine(), make_engine()
    p = prompt(40, 4)
    src.add_request("m", p, SamplingParams(max_tokens=12, temperature=0))
    for _ in range(4):
        src.step()
    state = src.export_request("m")
    state.kv = None
    dst.import_request(state)
    assert run_to_completion(dst)["m"] == reference_output(p, 12)


def test_random_workloads_finish_with_reference_tokens():
    rng = random.Random(7)
    for trial in range(15):
        mode = rng.choice(["recompute", "swap"])
        engine = make_engine(
            num_blocks=rng.randint(10, 40), num_cpu_blocks=rng.choice([0, 8, 64]), preemption_mode=mode,
            max_num_batched_tokens=rng.choice([8, 16, 64, 256]), max_num_seqs=rng.choice([1, 3, 8]),
            enable_prefix_caching=rng.random() < 0.7,
        )
        shared = prompt(rng.choice([0, 16, 24]), trial)
        expected = {}
        for i in range(rng.randint(1, 10)):
            p = shared + prompt(rng.randint(1, 60), 100 * trial + i)
            n = rng.randint(1, 40)
            engine.add_request(f"t{i}", p, SamplingParams(max_tokens=n, temperature=0))
            expected[f"t{i}"] = reference_output(p, n)
        done = run_to_completion(engine)
        assert done == expected
        assert engine.stats().kv_blocks_in_use == 0


@pytest.mark.parametrize("policy", ["fcfs", "mlq"])
def test_every_decode_a_step_schedules_is_told_to_the_policy_with_the_steps_time(policy):
    """FCFS's decodes are told in one call after the step's decisions (`on_step_scheduled`),
    MLQ's one by one (it extends `on_scheduled`): either way each has the step's service time."""
    engine = make_engine(policy=policy)
    for i in range(3):
        engine.add_request(f"r{i}", prompt(6, i), SamplingParams(max_tokens=8, temperature=0))
    engine.step()
    for _ in range(3):
        engine.clock.advance(0.5)
        began = engine.clock.now()
        engine.step()
        served = [s.request for s in engine.runner.steps[-1].scheduled]
        assert len(served) == 3 and all(s.num_new_tokens == 1 for s in engine.runner.steps[-1].scheduled)
        assert [r.last_service for r in served] == [began] * 3
    assert type(engine.scheduler.policy).decodes_in_one_call is (policy == "fcfs")
