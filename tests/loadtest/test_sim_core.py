"""The simulator's parts: the event loop, cost models, and that a simulated replica is the real engine."""
from __future__ import annotations

import math
import random

import pytest

from shunter.loadtest.sim.costs import (
    TOKEN_SEGMENTS,
    CostModel,
    LinearCost,
    StepShape,
    available,
    load_cost_model,
    mean_abs_rel_error,
)
from shunter.loadtest.sim.events import EventLoop, ReplicaClock
from shunter.loadtest.sim.fit_costs import fit
from shunter.loadtest.sim.metrics import GapHistogram
from shunter.loadtest.sim.replica import SimReplica
from shunter.replica.engine_config import EngineConfig
from shunter.replica.request import Request
from shunter.replica.scheduler import ScheduledRequest, SchedulerOutput
from shunter.sampling_params import SamplingParams
from shunter.testing.fake_engine import next_token, reference_output
from tests.replica.fakes import make_engine, prompt

STEP_S = 0.01


def fake_tokens(request: Request, end: int) -> int:
    """The fake model of tests/replica/fakes.py: the token after the first `end` tokens."""
    return next_token(request.all_token_ids[:end])


def constant_cost(seconds: float = STEP_S) -> CostModel:
    """Every step takes `seconds`, like FakeRunner's fixed step time; the fake model's shapes."""
    return CostModel("constant", "test", LinearCost({"fixed": seconds}), vocab_size=1000, max_model_len=4096,
                     kv_bytes_per_token=64, eos_token_ids=(0,))


# ---- the event loop --------------------------------------------------------------------------
def test_events_run_in_time_order_ties_in_insertion_order():
    loop, seen = EventLoop(), []
    loop.at(2.0, seen.append, "c")
    loop.at(1.0, seen.append, "a")
    loop.at(1.0, seen.append, "b")
    loop.after(0.5, lambda: loop.after(1.0, seen.append, "b2"))  # scheduled at 0.5 for 1.5
    loop.run()
    assert seen == ["a", "b", "b2", "c"] and loop.now() == 2.0 and loop.num_events == 5
    assert loop  # an empty loop is still a clock (`clock or MonotonicClock()` must keep it)


def test_run_until_stops_and_the_past_is_closed():
    loop, seen = EventLoop(), []
    for t in (1.0, 2.0, 3.0):
        loop.at(t, seen.append, t)
    loop.run(until=2.0)
    assert seen == [1.0, 2.0] and loop.pending == 1
    with pytest.raises(ValueError, match="before now"):
        loop.at(1.5, seen.append, 0)


def test_events_given_at_once_run_as_if_each_were_given_with_at():
    """`at_each` keeps a workload's arrivals off the heap; the order must be what `at` gives:
    time, then the order the events were given (so an arrival before a step of the same time)."""
    rng = random.Random(3)
    times = [round(rng.uniform(0, 5), 1) for _ in range(200)]  # rounded: many ties
    calls = [(t, f"w{i}") for i, t in enumerate(times)] + [(round(rng.uniform(0, 5), 1), f"x{i}") for i in range(50)]
    seen: dict[str, list[str]] = {"at": [], "at_each": []}
    for how in seen:
        loop = EventLoop()
        loop.at(0.0, lambda: loop.after(2.5, seen[how].append, "later"))  # scheduled while running
        loop.at(2.5, seen[how].append, "before the arrivals at 2.5")
        if how == "at":
            for t, name in calls[:200]:
                loop.at(t, seen[how].append, name)
        else:
            loop.at_each([(t, seen[how].append, (name,)) for t, name in calls[:200]])
        for t, name in calls[200:]:
            loop.at(t, seen[how].append, name)
        loop.run(until=3.0)
        assert loop.pending == sum(t > 3.0 for t, _ in calls)
        if how == "at_each":
            loop.at_each([(4.0, seen[how].append, ("given later, runs after the 4.0s given before",))])
        else:
            loop.at(4.0, seen[how].append, "given later, runs after the 4.0s given before")
        loop.run()
    assert seen["at_each"] == seen["at"] and len(seen["at"]) == 253
    with pytest.raises(ValueError, match="before now"):
        loop.at_each([(1.0, seen["at"].append, ("past",))])


def test_run_pauses_the_cyclic_collector_and_restores_it_even_on_an_error():
    import gc

    loop, seen = EventLoop(), []
    loop.at(1.0, lambda: seen.append(gc.isenabled()))
    assert gc.isenabled()
    loop.run()
    assert seen == [False] and gc.isenabled()
    loop.at(2.0, lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        loop.run()
    assert gc.isenabled()
    gc.disable()
    try:
        loop.run()  # a caller that disabled it keeps it disabled
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_replica_clock_leads_the_loop_during_a_step():
    loop = EventLoop(5.0)
    clock = ReplicaClock(loop)
    clock.lead = 0.25
    assert clock.now() == 5.25 and loop.now() == 5.0


def test_gap_histogram_quantiles_within_a_bin():
    rng = random.Random(0)
    values = sorted(rng.lognormvariate(-4, 1) for _ in range(20_000))
    hist = GapHistogram()
    for v in values:
        hist.add(v)
    for q in (0.5, 0.9, 0.99):
        assert hist.quantile(q) == pytest.approx(values[int(q * len(values))], rel=0.011)
    assert hist.fraction_above(values[int(0.9 * len(values))]) == pytest.approx(0.1, abs=0.01)


def test_gap_histogram_counts_repeated_gaps_like_fresh_ones():
    """`add` remembers the last gap's bin (a step's decodes share one gap): counts must not change."""
    gaps = [0.02, 0.02, 0.02, 1e-6, 1e-6, 0.5, 0.02, 5e4, 5e4, 0.02]
    remembering, fresh = GapHistogram(), []
    for g in gaps:
        remembering.add(g)
        one = GapHistogram()
        one.add(g)
        fresh.append(one.counts)
    assert remembering.counts == [sum(c) for c in zip(*fresh)] and remembering.total == len(gaps)


# ---- cost models -----------------------------------------------------------------------------
def test_step_shape_counts_what_a_step_computes():
    a = Request("a", list(range(1, 101)), SamplingParams(max_tokens=4), 0.0)  # a 40-token chunk of a prefill
    b = Request("b", list(range(1, 11)), SamplingParams(max_tokens=4), 0.0, output_token_ids=[5, 6])  # a decode
    out = SchedulerOutput([ScheduledRequest(a, 20, 40, []), ScheduledRequest(b, 11, 1, [])],
                          blocks_to_swap_out=[(1, 2)])
    shape = StepShape.of(out, block_size=16)
    assert shape == StepShape(num_tokens=41, num_seqs=2, num_rows=1, kv_tokens=60 + 12,
                              attn_keys=40 * 20 + 40 * 41 // 2 + 11 + 1, swap_tokens=16)


def test_a_step_of_decodes_has_the_shape_its_chunks_walked_give():
    """`SchedulerOutput.decodes` set: the shape comes from the requests' computed counts alone."""
    reqs = [Request(f"d{i}", list(range(1, 11 + i)), SamplingParams(max_tokens=8), 0.0, output_token_ids=[5] * i)
            for i in range(1, 4)]
    scheduled = []
    for r in reqs:
        r.num_computed_tokens = r.num_tokens - 1
        scheduled.append(ScheduledRequest(r, r.num_computed_tokens, 1, []))
    walked = StepShape.of(SchedulerOutput(list(scheduled), blocks_to_swap_in=[(1, 2)]), block_size=16)
    told = StepShape.of(SchedulerOutput(list(scheduled), blocks_to_swap_in=[(1, 2)], decodes=reqs), block_size=16)
    assert told == walked and walked.num_rows == 3 and walked.swap_tokens == 16


def test_linear_cost_is_its_weighted_sum_and_checks_feature_names():
    flat = LinearCost({"fixed": 0.002, "kv_tokens": 1e-6, **{seg: 1e-4 for seg in TOKEN_SEGMENTS}})
    assert flat.step_seconds(StepShape(num_tokens=300, kv_tokens=1000)) == pytest.approx(0.002 + 0.03 + 0.001)
    # Tokens count piecewise: 10 tokens are 2 in [0, 2), 2 in [2, 4), 4 in [4, 8) and 2 in [8, 16).
    steps = LinearCost({"tokens_0_2": 1.0, "tokens_2_4": 10.0, "tokens_4_8": 100.0, "tokens_8_16": 1000.0})
    assert steps.step_seconds(StepShape(num_tokens=10)) == pytest.approx(2 + 20 + 400 + 2000)
    with pytest.raises(ValueError, match="unknown cost features"):
        LinearCost({"flops": 1.0})
    assert mean_abs_rel_error(flat, [(StepShape(num_tokens=10, kv_tokens=1000), 0.004)]) == pytest.approx(0.0)


def test_fit_recovers_a_monotone_model_from_its_own_steps():
    true = LinearCost({"fixed": 0.05, "tokens_0_2": 0.002, "tokens_2_4": 0.013, "tokens_4_8": 0.006,
                       "tokens_8_16": 0.0, **{s: 0.0015 for s in TOKEN_SEGMENTS[4:]}, "kv_tokens": 7e-6})
    shapes = [StepShape(b, b, b, b * c, b * c) for b in (1, 2, 4, 8, 16, 32) for c in (32, 256, 768)]
    shapes += [StepShape(n, 1, 1, n, n * (n + 1) // 2) for n in (16, 64, 256, 512)]
    got = LinearCost(fit([(s, true.step_seconds(s)) for s in shapes]))
    assert all(v >= 0 for k, v in got.coefficients.items())
    for s in shapes:
        assert got.step_seconds(s) == pytest.approx(true.step_seconds(s), rel=0.02)


def test_every_committed_cost_model_loads_and_says_where_it_comes_from():
    assert available(), "no cost models committed"
    for name in available():
        cost = load_cost_model(name)
        assert len(cost.source) > 40, name
        assert cost.step_seconds(StepShape(1, 1, 1, 100, 100)) > 0
    with pytest.raises(ValueError, match="no cost model"):
        load_cost_model("nope")


def test_roofline_decode_is_memory_bound_and_long_prefill_compute_bound():
    cost = load_cost_model("h100_llama-3-8b")
    hw, eff = cost.raw["hardware"], cost.raw["efficiency"]
    model = cost.step.model
    decode = cost.step_seconds(StepShape(1, 1, 1, 512, 512))
    assert decode == pytest.approx(eff["overhead_s"] + model.bytes(512) / (hw["bandwidth"] * eff["bandwidth"]))
    n = 8192
    prefill = cost.step_seconds(StepShape(n, 1, 1, n, n * (n + 1) // 2))
    assert prefill == pytest.approx(eff["overhead_s"] + model.flops(n, 1, n * (n + 1) // 2) / (hw["peak_flops"] * eff["flops"]))
    assert 0.1 < prefill < 1.0  # 8k tokens of an 8B model (~1.3e14 FLOPs) on an H100: a few tenths of a second
    # 16 GB of bf16 weights leave ~54 GB of the 72 GB budget for KV at 128 KiB per token.
    assert cost.kv_bytes_per_token == 32 * 8 * 128 * 2 * 2
    assert 24_000 < cost.kv_blocks(16) < 28_000


# ---- a simulated replica is the real engine ------------------------------------------------------
def run_sim_replica(requests: dict[str, list[int]], max_tokens: int, **settings):
    loop, steps, schedules = EventLoop(), [], []
    config = EngineConfig(model="sim", num_kv_blocks=64, check_invariants=True, **settings)

    def on_step(replica: SimReplica, outputs) -> None:
        steps.append((loop.now(), [(o.request_id, o.new_token_ids) for o in outputs]))

    replica = SimReplica("r0", loop, config, constant_cost(), on_step, token_fn=fake_tokens)
    execute = replica.runner.execute

    def recording(out):
        schedules.append([(s.request.request_id, s.num_new_tokens) for s in out.scheduled])
        return execute(out)

    replica.runner.execute = recording
    for rid, p in requests.items():
        replica.submit(rid, p, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    loop.run()
    return schedules, steps


def run_fake_engine(requests: dict[str, list[int]], max_tokens: int, **settings):
    engine = make_engine(num_blocks=64, async_scheduling=False, **settings)  # the simulator steps synchronously
    engine.runner.step_time = STEP_S
    for rid, p in requests.items():
        engine.add_request(rid, p, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    steps = []
    while engine.has_unfinished_requests():
        outputs = engine.step()
        steps.append((engine.clock.now(), [(o.request_id, o.new_token_ids) for o in outputs]))
    schedules = [[(s.request.request_id, s.num_new_tokens) for s in out.scheduled] for out in engine.runner.steps]
    return schedules, steps


@pytest.mark.parametrize("policy", ["fcfs", "sjf", "slo"])
def test_simulated_replica_schedules_and_emits_exactly_as_the_engine_over_the_fake_runner(policy):
    requests = {f"q{i}": prompt(10 + 13 * i, i) for i in range(6)}
    settings = dict(max_num_batched_tokens=32, max_num_seqs=4, policy=policy)
    sim_schedules, sim_steps = run_sim_replica(requests, 12, **settings)
    fake_schedules, fake_steps = run_fake_engine(requests, 12, **settings)
    assert sim_schedules == fake_schedules
    assert [(pytest.approx(t), outs) for t, outs in sim_steps] == fake_steps
    tokens: dict[str, list[int]] = {}
    for _, outs in sim_steps:
        for rid, new in outs:
            tokens.setdefault(rid, []).extend(new)
    assert tokens == {rid: reference_output(p, 12, ignore_eos=True) for rid, p in requests.items()}


def test_commands_wait_for_the_running_step_and_tokens_come_at_its_end():
    loop, seen = EventLoop(), []
    replica = SimReplica("r0", loop, EngineConfig(model="sim", num_kv_blocks=64), constant_cost(0.5),
                         lambda r, outs: seen.append((loop.now(), [o.request_id for o in outs])), token_fn=fake_tokens)
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    replica.submit("a", prompt(8, 1), params)
    loop.at(0.2, replica.submit, "b", prompt(8, 2), params)  # arrives mid-step: joins the next one
    loop.run()
    assert seen == [(0.5, ["a"]), (1.0, ["a", "b"]), (1.5, ["b"])]
    assert math.isclose(replica.runner.busy_s, 1.5)


def test_a_simulated_load_runs_beside_the_steps_and_an_empty_step_waits_for_it():
    """CPU-tier loads lengthen no step and land after their copy time; a step with nothing to
    compute lasts until the next load lands, at most the engine's wait (`MAX_LOAD_WAIT_S`)."""
    from shunter.loadtest.sim.runner import MAX_LOAD_WAIT_S, SimRunner

    step_s, per_token_s = 0.001, 1e-5
    cost = CostModel("copies", "test", LinearCost({"fixed": step_s, "swap_tokens": per_token_s}), vocab_size=1000,
                     max_model_len=4096, kv_bytes_per_token=64, eos_token_ids=(0,))
    loop = EventLoop()
    clock = ReplicaClock(loop)
    runner = SimRunner(cost, clock, num_blocks=64, num_cpu_blocks=64, block_size=16)
    r = Request("r", [3] * 40, SamplingParams(max_tokens=4), arrival_time=0.0)
    tokens = runner.execute(SchedulerOutput(scheduled=[ScheduledRequest(r, 0, 8, [0])], blocks_to_load=[(0, 1)] * 50))
    assert clock.lead == pytest.approx(step_s)  # 800 tokens' load (8 ms) beside it, not in it
    clock.lead = 0.0
    assert tokens.loads.lands_at == pytest.approx(800 * per_token_s) and not tokens.loads.done()
    runner.execute(SchedulerOutput())  # nothing to compute: it waits for the load, at most MAX_LOAD_WAIT_S
    assert MAX_LOAD_WAIT_S < 800 * per_token_s and clock.lead == pytest.approx(MAX_LOAD_WAIT_S)
    loop.t, clock.lead = 0.009, 0.0
    assert tokens.loads.done()
    runner.execute(SchedulerOutput())
    assert clock.lead == pytest.approx(step_s)  # landed: an empty step is a plain one again
