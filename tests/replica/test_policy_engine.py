"""Every policy through the real Engine over the scripted fake runner (tier 1).

Policies reorder work and never change tokens: every run here is checked against the token
oracle, and `make_engine` turns on the scheduler's invariant checks at every step.
"""
from __future__ import annotations

import random

import pytest

from shunter import SamplingParams
from shunter.clock import FakeClock
from shunter.replica.engine import Engine
from shunter.replica.engine_config import EngineConfig
from shunter.replica.output_collector import OutputCollector
from shunter.replica.policies import POLICIES
from shunter.replica.preemption import PreemptionCosts
from shunter.replica.step_staircase import StepStaircase
from tests.replica.fakes import FakeRunner, finished_outputs, make_engine, prompt, reference_output, run_to_completion

MODES = ["recompute", "swap", "auto"]


class CostedFakeRunner(FakeRunner):
    """A fake runner that 'measures' preemption costs, so auto mode sees both ways win."""

    def measure_preemption_costs(self) -> PreemptionCosts:
        # Swapping a 16-token block one way costs 7 recomputed tokens: recompute wins below
        # ~112 computed tokens, swap above.
        return PreemptionCosts(recompute_s_per_token=1e-4, swap_s_per_block=7e-4, block_size=self.block_size)


TILES = StepStaircase.uniform(32, 1e-3, fixed_s=1e-3)  # what RAD's runner "measures": tiles of 32 tokens


def costed_engine(num_blocks: int, num_cpu_blocks: int, **settings) -> Engine:
    clock = FakeClock()
    config = EngineConfig(model="fake", num_kv_blocks=num_blocks, check_invariants=True, **settings)
    runner = CostedFakeRunner(num_blocks, config.block_size, num_cpu_blocks, clock=clock)
    runner.staircase = TILES
    return Engine(config, clock=clock, runner=runner)


@pytest.mark.parametrize("async_scheduling", [True, False], ids=["async", "sync"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_oracle_under_every_policy_and_preemption_mode(policy, mode, async_scheduling):
    """Mixed workloads under memory and seat pressure: same tokens as the reference. Trial 0
    is sure to run out of blocks (six requests of 5 blocks each in a pool of 14); the others
    are random, trial 1 with cache-aware ordering (every policy but static has it). RAD's runner
    finds tiles of 32 tokens; its budgets include one off the tiles (40)."""
    rng = random.Random(f"{policy}-{mode}")
    preemptions = swaps = 0
    budgets = [40, 64, 256] if policy == "rad" else [16, 64, 256]
    for trial in range(4):
        pressure = trial == 0
        engine = costed_engine(
            num_blocks=14 if pressure else rng.randint(14, 30),
            num_cpu_blocks=0 if mode == "recompute" else (64 if pressure else rng.choice([4, 64])),
            policy=policy, preemption_mode=mode, max_num_batched_tokens=64 if pressure else rng.choice(budgets),
            max_num_seqs=8 if pressure else rng.choice([2, 4, 8]), enable_prefix_caching=rng.random() < 0.7,
            async_scheduling=async_scheduling,
            cache_aware_order=policy != "static" and (trial == 1 or rng.random() < 0.3),
        )
        shared = prompt(rng.choice([0, 16]), trial)
        expected, done, collector = {}, {}, OutputCollector()
        for i in range(6 if pressure else rng.randint(4, 9)):
            p = prompt(30, i) if pressure else shared + prompt(rng.randint(1, 120), 1000 * trial + i)
            n = 40 if pressure else rng.randint(1, 40)
            params = SamplingParams(
                max_tokens=n, temperature=0, ignore_eos=pressure, priority=rng.choice(["interactive", "batch"]),
                expected_output_tokens=rng.choice([None, rng.randint(1, 40)]),
            )
            engine.add_request(f"t{i}", p, params)
            expected[f"t{i}"] = reference_output(p, n, ignore_eos=pressure)
            if not pressure and rng.random() < 0.4:  # arrivals spread over time
                done.update({rid: o.outputs[0].token_ids for rid, o in finished_outputs(engine, collector).items()})
        done.update(run_to_completion(engine))
        assert done == expected
        assert engine.stats().kv_blocks_in_use == 0
        assert engine.kv.num_free_cpu_blocks == engine.kv.num_cpu_blocks
        preemptions += engine.stats().num_preemptions
        swaps += engine.stats().num_swaps
    assert preemptions > 0
    if mode != "auto":  # swap mode really swapped; recompute mode never does
        assert (swaps > 0) == (mode == "swap")


def test_auto_mode_swaps_big_victims_and_recomputes_small_ones():
    engine = costed_engine(num_blocks=24, num_cpu_blocks=64, preemption_mode="auto", max_num_batched_tokens=256)
    prompts = [prompt(8, 1), prompt(8, 2), prompt(200, 3), prompt(150, 4)]
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, SamplingParams(max_tokens=60, temperature=0, ignore_eos=True))
    done = run_to_completion(engine)
    assert all(done[f"r{i}"] == reference_output(p, 60, ignore_eos=True) for i, p in enumerate(prompts))
    stats = engine.scheduler.stats
    assert stats.num_swaps_out > 0 and stats.num_recomputed_tokens > 0


def test_finish_order_per_policy_with_one_seat():
    """One seat, all queued at once: the order each policy promises."""
    jobs = {  # name: (prompt length, max_tokens, priority, arrival)
        "long-batch": (60, 20, "batch", 0.0),
        "short-batch": (4, 2, "batch", 0.1),
        "mid-inter": (30, 8, "interactive", 0.2),
        "short-inter": (4, 3, "interactive", 0.3),
    }
    want = {
        "fcfs": ["long-batch", "short-batch", "mid-inter", "short-inter"],
        "static": ["long-batch", "short-batch", "mid-inter", "short-inter"],
        "sjf": ["short-batch", "short-inter", "mid-inter", "long-batch"],
        "priority": ["mid-inter", "short-inter", "long-batch", "short-batch"],
        # All start at level 0 (prompts under 128) and none makes 32 tokens: FIFO.
        "mlq": ["long-batch", "short-batch", "mid-inter", "short-inter"],
        "slo": ["short-inter", "mid-inter", "short-batch", "long-batch"],  # class, then shortest prompt
    }
    for policy, order in want.items():
        engine = make_engine(policy=policy, max_num_seqs=1)
        for name, (n, m, prio, t) in jobs.items():
            engine.add_request(name, prompt(n, len(name)), SamplingParams(max_tokens=m, temperature=0, ignore_eos=True, priority=prio), arrival_time=t)
        finished = []
        while engine.has_unfinished_requests():
            finished += [o.request_id for o in engine.step() if o.finished]
        assert finished == order, policy


@pytest.mark.parametrize("policy", ["fcfs", "sjf", "mlq", "priority", "static"])
def test_decode_first_a_long_prefill_never_stalls_running_decodes(policy):
    engine = make_engine(policy=policy, max_num_batched_tokens=32, max_num_seqs=8)
    for i in range(3):
        engine.add_request(f"d{i}", prompt(4, i), SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    engine.step()
    engine.add_request("long", prompt(300, 9), SamplingParams(max_tokens=2, temperature=0))
    for _ in range(10):
        engine.step()
        scheduled = {s.request.request_id: s.num_new_tokens for s in engine.runner.steps[-1].scheduled}
        if policy == "static":  # the long prompt waits for the batch to end
            assert "long" not in scheduled
        else:
            assert scheduled["long"] == 32 - 3  # chunked into what the decodes leave
        assert all(scheduled[f"d{i}"] == 1 for i in range(3))


@pytest.mark.parametrize("policy", ["priority", "mlq", "slo"])
def test_a_higher_class_takes_a_seat_from_a_lower_one(policy):
    """Seats, not blocks, are full: the interactive/short request must not wait behind batch jobs."""
    engine = make_engine(policy=policy, max_num_seqs=2, num_blocks=64)
    for i in range(2):
        engine.add_request(f"b{i}", prompt(200, i), SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, priority="batch"))
    for _ in range(3):
        engine.step()
    engine.add_request("vip", prompt(4, 7), SamplingParams(max_tokens=3, temperature=0))
    engine.step()
    assert "vip" in {s.request.request_id for s in engine.runner.steps[-1].scheduled}
    assert engine.scheduler.stats.num_priority_preemptions == 1
    done = run_to_completion(engine)
    assert done["vip"] == reference_output(prompt(4, 7), 3)
    assert done["b0"] == reference_output(prompt(200, 0), 40, ignore_eos=True)


@pytest.mark.parametrize("policy", ["priority", "slo"])  # the policies with priority classes
def test_a_preempted_lower_class_is_not_resumed_while_a_higher_class_waits(policy):
    """One seat. A batch job is swapped out for an interactive one; while that runs, a second
    interactive request queues. When the seat frees, the second must take it: resuming the batch
    job first only gets it preempted for the waiting interactive request at the next step, one
    more swap each way (SLAI did this, and under a stream of interactive arrivals, every step)."""
    engine = make_engine(policy=policy, max_num_seqs=1, num_blocks=64, num_cpu_blocks=64, preemption_mode="swap")
    engine.add_request("batch", prompt(40, 1), SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, priority="batch"))
    engine.step()
    engine.add_request("vip1", prompt(4, 2), SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    engine.step()  # the batch job is swapped out, vip1 runs
    engine.add_request("vip2", prompt(4, 3), SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    done = run_to_completion(engine)
    stats = engine.scheduler.stats
    assert (stats.num_preemptions, stats.num_swaps_out, stats.num_swaps_in) == (1, 1, 1)
    assert done["batch"] == reference_output(prompt(40, 1), 30, ignore_eos=True)


def test_fcfs_never_preempts_for_a_newcomer():
    engine = make_engine(policy="fcfs", max_num_seqs=1)
    engine.add_request("first", prompt(10, 1), SamplingParams(max_tokens=5, temperature=0, priority="batch"))
    engine.step()
    engine.add_request("second", prompt(4, 2), SamplingParams(max_tokens=2, temperature=0))
    run_to_completion(engine)
    assert engine.scheduler.stats.num_preemptions == 0


def _stream_until_long_finishes(policy: str, max_steps: int, **settings) -> int | None:
    """An endless stream of short jobs (two per step on two seats) and one long job queued
    behind them; the step at which the long job finishes, or None if it never does."""
    engine = make_engine(policy=policy, policy_settings=settings, max_num_seqs=2, max_num_batched_tokens=32, num_blocks=256)
    for i in range(4):
        engine.add_request(f"s{i}", prompt(4, i), SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
    engine.step()
    long_prompt = prompt(200, 99)
    engine.add_request("long", long_prompt, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
    collector = OutputCollector()
    for step in range(max_steps):
        for j in range(2):
            rid = f"s{step}-{j}"
            engine.add_request(rid, prompt(4, step * 2 + j), SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
        done = finished_outputs(engine, collector)
        if "long" in done:
            assert done["long"].outputs[0].token_ids == reference_output(long_prompt, 20, ignore_eos=True)
            return step
    return None


@pytest.mark.parametrize(
    "policy, bounded, unbounded, max_steps",
    [
        ("sjf", {"max_wait_s": 0.3}, {"max_wait_s": 1e9}, 150),
        ("mlq", {"aging_s": 0.2, "quantum": 16}, {"aging_s": 1e9, "max_demotions": 10**9, "quantum": 16}, 400),
    ],
)
def test_starvation_bound_under_an_endless_stream_of_short_jobs(policy, bounded, unbounded, max_steps):
    """With aging the long job finishes within a bounded number of steps; without, it starves
    (which shows the stream really is endless enough to starve it)."""
    finished_at = _stream_until_long_finishes(policy, max_steps, **bounded)
    assert finished_at is not None and finished_at < max_steps
    assert _stream_until_long_finishes(policy, max_steps, **unbounded) is None


def test_priority_batch_job_is_not_starved_by_interactive_stream():
    engine = make_engine(policy="priority", policy_settings={"aging_s": 0.3}, max_num_seqs=2, max_num_batched_tokens=32)
    long_prompt = prompt(100, 5)
    engine.add_request("batch", long_prompt, SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, priority="batch"))
    for step in range(150):
        for j in range(2):
            engine.add_request(f"i{step}-{j}", prompt(4, step + j), SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
        if any(o.request_id == "batch" and o.finished for o in engine.step()):
            break
    else:
        pytest.fail("the batch job starved")


def test_deadline_that_can_no_longer_be_met_ends_the_request():
    engine = make_engine(max_num_seqs=1)  # fake steps take 10 ms
    engine.add_request("hog", prompt(10, 1), SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    engine.add_request("late", prompt(10, 2), SamplingParams(max_tokens=5, temperature=0, deadline_ms=100))
    engine.add_request("fine", prompt(10, 3), SamplingParams(max_tokens=5, temperature=0, deadline_ms=10_000))
    outs, collector = {}, OutputCollector()
    while engine.has_unfinished_requests():
        outs.update({rid: o.outputs[0] for rid, o in finished_outputs(engine, collector).items()})
    assert outs["late"].finish_reason == "deadline" and outs["late"].token_ids == []
    assert outs["fine"].finish_reason == "length"
    assert outs["hog"].token_ids == reference_output(prompt(10, 1), 30, ignore_eos=True)
    assert engine.scheduler.stats.num_deadline_finished == 1
    assert engine.stats().kv_blocks_in_use == 0


def test_deadline_is_enforced_before_it_passes_when_the_tokens_cannot_fit():
    engine = make_engine()
    engine.add_request("warm", prompt(4, 1), SamplingParams(max_tokens=2, temperature=0))
    run_to_completion(engine)  # one measured step of 10 ms
    engine.add_request("doomed", prompt(4, 2), SamplingParams(max_tokens=50, temperature=0, ignore_eos=True, deadline_ms=200))
    out = engine.step()
    assert [o.finish_reason for o in out] == ["deadline"]  # 50 steps of 10 ms > 200 ms


def test_admission_watermark_avoids_preemptions_without_changing_tokens():
    prompts = [prompt(20 + 7 * i, i) for i in range(8)]

    def run(watermark):
        engine = make_engine(num_blocks=16, max_num_batched_tokens=64, admission_watermark=watermark)
        for i, p in enumerate(prompts):
            engine.add_request(f"r{i}", p, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
        done = run_to_completion(engine)
        assert all(done[f"r{i}"] == reference_output(p, 30, ignore_eos=True) for i, p in enumerate(prompts))
        return engine.stats().num_preemptions

    assert run(None) > 0
    assert run(1.0) == 0


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_policy_settings_reach_the_policy_through_engine_config(policy):
    with pytest.raises(ValueError, match="bogus"):
        make_engine(policy=policy, policy_settings={"bogus": 1})
    with pytest.raises(ValueError, match="preemption_mode"):
        EngineConfig(preemption_mode="teleport")
    with pytest.raises(ValueError, match="admission_watermark"):
        EngineConfig(admission_watermark=1.5)


def test_mlq_demoted_job_yields_its_seat_to_a_newcomer_and_still_finishes():
    engine = make_engine(policy="mlq", policy_settings={"quantum": 4}, max_num_seqs=1)
    engine.add_request("chatty", prompt(6, 1), SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    for _ in range(8):  # 8 output tokens: the level-0 quantum (4) is used up
        engine.step()
    engine.add_request("new", prompt(6, 2), SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
    finished = []
    while engine.has_unfinished_requests():
        finished += [o.request_id for o in engine.step() if o.finished]
    assert finished == ["new", "chatty"]
    assert engine.scheduler.stats.num_priority_preemptions == 1
