"""Scheduling policies as plain objects: ordering, victims, aging, estimators, step sizing (tier 1).

Policies are driven here with hand-built `Request`s and a FakeClock, no engine; the engine-level
behaviour (oracle, starvation, preemption, deadlines) is in test_policy_engine.py.
"""
from __future__ import annotations

import math

import pytest

from shunter import SamplingParams
from shunter.clock import FakeClock
from shunter.replica.policies import POLICIES, PolicyContext, make_policy
from shunter.replica.policies.estimator import OutputLengthEstimator
from shunter.replica.policies.slos import parse_slo_defaults, slo_of
from shunter.replica.policies.step_time import StepTimeModel
from shunter.replica.preemption import PreemptionCosts
from shunter.replica.request import Request, RequestStatus


def req(
    rid: str, prompt: int = 8, t: float = 0.0, out: int = 0, computed: int | None = None,
    status: RequestStatus = RequestStatus.WAITING, **params,
) -> Request:
    params.setdefault("max_tokens", 64)
    r = Request(rid, list(range(1, prompt + 1)), SamplingParams(**params), arrival_time=t)
    r.output_token_ids = [5] * out
    r.num_computed_tokens = r.num_tokens - 1 if computed is None and out else (computed or 0)
    r.status = status
    return r


def ids(requests: list[Request]) -> list[str]:
    return [r.request_id for r in requests]


def test_registry_has_every_policy_and_refuses_unknown_names_and_settings():
    assert set(POLICIES) == {"fcfs", "sjf", "mlq", "priority", "slo", "static", "rad"}
    clock = FakeClock()
    for name in POLICIES:
        assert make_policy(name, clock).name == name
        with pytest.raises(ValueError, match="no_such_setting"):
            make_policy(name, clock, no_such_setting=1)
    with pytest.raises(ValueError, match="policy must be one of"):
        make_policy("lifo", clock)


@pytest.mark.parametrize("name, setting", [("sjf", {"max_wait_s": 0}), ("mlq", {"quantum": 0}),
                                           ("priority", {"aging_s": -1}), ("slo", {"theta": 3, "theta_high": 1}),
                                           ("slo", {"slo_defaults": {"vip": {}}}), ("static", {"batch_size": 0})])
def test_bad_settings_are_refused(name, setting):
    with pytest.raises(ValueError):
        make_policy(name, FakeClock(), **setting)


def test_fcfs_orders_by_arrival_and_preempts_the_newest():
    p = make_policy("fcfs", FakeClock())
    a, b, c = req("a", t=2), req("b", t=1), req("c", t=3)
    assert ids(p.order([a, b, c])) == ["b", "a", "c"]
    assert p.pick_victim([a, b, c]) is c


def test_sjf_runs_least_remaining_work_first_using_hints_then_max_tokens():
    p = make_policy("sjf", FakeClock())
    long_prompt = req("long-prompt", prompt=400, max_tokens=4)
    hinted = req("hinted", prompt=8, max_tokens=500, expected_output_tokens=10)
    long_out = req("long-out", prompt=8, max_tokens=300)
    assert ids(p.order([long_prompt, long_out, hinted])) == ["hinted", "long-out", "long-prompt"]
    assert p.pick_victim([long_prompt, hinted, long_out]) is long_prompt


def test_sjf_marks_a_request_starved_for_good_after_max_wait():
    clock = FakeClock()
    p = make_policy("sjf", clock, max_wait_s=1.0)
    long = req("long", prompt=500, t=0.0)
    clock.advance(0.5)
    short = req("short", prompt=4, t=0.5)
    assert ids(p.order([long, short])) == ["short", "long"]
    clock.advance(0.6)  # long has waited 1.1 s
    assert ids(p.order([long, short])) == ["long", "short"]
    p.on_scheduled(long, 16)  # served: still starved (sticky), so it is not the first victim either
    assert ids(p.order([long, short])) == ["long", "short"]
    assert p.pick_victim([long, short]) is short


def test_estimator_uses_hint_then_bucket_quantile_then_global_then_max_tokens():
    est = OutputLengthEstimator(quantile=0.5, min_samples=2)
    probe = req("p", prompt=10, max_tokens=100)
    assert est.predict(probe) == 100  # nothing learned
    for n in (20, 30, 40):
        done = req(f"d{n}", prompt=1000, out=n)
        done.finish_reason = "length"
        est.observe(done)
    assert est.predict(probe) == 30  # no data for short prompts yet: global median
    for n in (4, 6, 8):
        done = req(f"s{n}", prompt=12, out=n)
        done.finish_reason = "stop"
        est.observe(done)
    assert est.predict(probe) == 6  # same power-of-two bucket as the 10-token prompt
    cut = req("cut", prompt=12, out=1)
    cut.finish_reason = "deadline"
    est.observe(cut)  # requests cut short teach nothing
    assert est.predict(probe) == 6
    assert est.predict(req("h", prompt=12, max_tokens=100, expected_output_tokens=77)) == 77
    assert est.predict(req("cap", prompt=12, max_tokens=3)) == 3
    assert est.remaining(req("over", prompt=12, out=50, max_tokens=100)) == 1


def test_mlq_starts_by_prompt_length_demotes_after_a_doubling_quantum_and_ages():
    clock = FakeClock()
    p = make_policy("mlq", clock, quantum=8, level_prompt_tokens=(16, 64), aging_s=1.0, max_demotions=10)
    short, mid, long = req("s", prompt=8), req("m", prompt=32), req("l", prompt=100)
    assert [p.level(r) for r in (short, mid, long)] == [0, 1, 2]
    assert ids(p.order([long, mid, short])) == ["s", "m", "l"]
    p.on_scheduled(short, 8)  # the prompt is paid for by the start level, not the quantum
    assert p.level(short) == 0
    short.num_computed_tokens = 8
    p.on_scheduled(short, 8)  # 8 output positions = the level-0 quantum
    assert p.level(short) == 1
    short.num_computed_tokens = 16
    p.on_scheduled(short, 15)
    assert p.level(short) == 1  # 15 < 16, the level-1 quantum
    short.num_computed_tokens = 0  # preempted by recompute: recomputing is not new work
    p.on_scheduled(short, 31)
    assert p.level(short) == 1
    clock.advance(2.0)  # two aging periods without service: up to level 0 (from 2)
    assert p.level(long) == 0
    p.on_scheduled(long, 4)
    clock.advance(0.5)
    assert p.level(long) == 0  # kept once served
    fresh_mid = req("m2", prompt=32, t=clock.now())
    assert p.should_preempt(req("new", prompt=4, t=clock.now()), fresh_mid) and not p.should_preempt(fresh_mid, long)


def test_mlq_goes_back_to_the_top_after_max_demotions():
    p = make_policy("mlq", FakeClock(), num_levels=2, quantum=4, max_demotions=3)
    r = req("r", prompt=4)
    r.num_computed_tokens = 4
    levels = []
    for _ in range(4):
        p.on_scheduled(r, 16)
        r.num_computed_tokens += 16
        levels.append(p.level(r))
    assert levels == [1, 1, 0, 1]  # the bottom level's used-up quanta count as demotions


def test_priority_orders_classes_then_arrival_and_ages_batch_up():
    clock = FakeClock()
    p = make_policy("priority", clock, aging_s=2.0)
    batch = req("batch", t=0.0, priority="batch")
    inter = req("inter", t=1.0)
    assert ids(p.order([batch, inter])) == ["inter", "batch"]
    assert p.should_preempt(inter, batch) and not p.should_preempt(batch, inter)
    assert p.pick_victim([batch, inter]) is batch
    clock.advance(2.5)
    assert p.level(batch) == 0 and ids(p.order([batch, inter])) == ["batch", "inter"]  # older now
    p.on_scheduled(batch, 8)
    assert p.level(batch) == 0  # sticky: not preempted straight back by its new peers
    assert not p.should_preempt(req("late", t=clock.now()), batch)


def test_victims_lowest_class_first_then_cheapest_to_resume():
    p = make_policy("priority", FakeClock())
    p.on_step(PolicyContext(preemption_mode="recompute"))
    small_batch = req("small", prompt=10, out=1, priority="batch")
    big_batch = req("big", prompt=200, out=1, priority="batch")
    inter = req("inter", prompt=1, out=1)
    assert p.pick_victim([inter, big_batch, small_batch]) is small_batch
    assert p.pick_victim([inter, big_batch]) is big_batch
    assert p.pick_victim([inter]) is inter


def test_preemption_costs_choose_the_cheaper_way_per_victim():
    costs = PreemptionCosts(recompute_s_per_token=1.0, swap_s_per_block=7.0, block_size=16)
    small, big = req("small", prompt=20, out=1), req("big", prompt=300, out=1)
    assert costs.choose(small, "auto", can_swap=True) == "recompute"  # 21 < 2 * 2 * 7
    assert costs.choose(big, "auto", can_swap=True) == "swap"  # 301 > 2 * 19 * 7
    assert costs.choose(big, "auto", can_swap=False) == "recompute"
    assert costs.choose(small, "swap", can_swap=True) == "swap"
    assert costs.choose(big, "recompute", can_swap=True) == "recompute"
    assert costs.resume_s(big, "auto") == 2 * 19 * 7
    no_pool = PreemptionCosts(swap_s_per_block=math.inf)
    assert no_pool.choose(big, "auto", can_swap=True) == "recompute"


def test_slo_defaults_per_class_and_per_request_overrides():
    defaults = parse_slo_defaults({"batch": {"tbt_ms": 900}})
    assert slo_of(req("b", priority="batch"), defaults).tbt_ms == 900
    assert slo_of(req("i", tbt_ms=50), defaults).tbt_ms == 50
    assert slo_of(req("i2"), defaults).ttft_ms == parse_slo_defaults(None)["interactive"].ttft_ms


def test_step_time_model_fits_fixed_plus_per_token():
    m = StepTimeModel()
    assert m.max_tokens_within(1.0) is None
    for n in (10, 100, 50, 200, 20) * 4:
        m.observe(n, 0.005 + 0.0001 * n)
    fixed, per_token = m.coefficients()
    assert fixed == pytest.approx(0.005, rel=1e-3) and per_token == pytest.approx(0.0001, rel=1e-3)
    assert m.max_tokens_within(0.015) == pytest.approx(100, abs=1)
    assert m.max_tokens_within(0.001) == 0


def test_slai_plan_urgent_decodes_then_prefills_then_new_short_first_then_relaxed_decodes():
    clock = FakeClock(10.0)
    p = make_policy("slo", clock, theta=1.0)
    model = StepTimeModel()
    model.observe(100, 0.05)
    p.on_step(PolicyContext(mean_step_time=0.05, step_model=model, max_num_batched_tokens=512))
    running = RequestStatus.RUNNING
    urgent = req("urgent", out=3, status=running, tbt_ms=100)
    urgent.last_token_time = 9.93  # due 10.03, LST 9.98: passed
    relaxed = req("relaxed", out=3, status=running, tbt_ms=1000)
    relaxed.last_token_time = 9.99
    ongoing = req("ongoing", prompt=300, computed=100, status=running)
    new_long, new_short = req("new-long", prompt=200, t=9.0), req("new-short", prompt=20, t=9.5)
    plan = p.plan([relaxed, ongoing, urgent], [], [new_long, new_short])
    assert ids(plan) == ["urgent", "ongoing", "new-short", "new-long", "relaxed"]
    # Tightest slack 0.03 s at 0.5 ms/token: ~60 tokens, minus one per decode for the chunk.
    assert p.token_budget() in (59, 60) and p.prefill_chunk() == p.token_budget() - 2


def test_slai_budget_grows_with_slack_and_theta_grows_with_kv_usage():
    clock = FakeClock(10.0)
    p = make_policy("slo", clock, min_budget=8, max_budget=256)
    model = StepTimeModel()
    model.observe(100, 0.01)
    p.on_step(PolicyContext(mean_step_time=0.01, step_model=model, kv_usage=0.5))
    decode = req("d", out=2, status=RequestStatus.RUNNING, tbt_ms=1000)
    decode.last_token_time = 10.0
    p.plan([decode], [], [])
    assert p.token_budget() == 256  # a second of slack: the ceiling
    decode.last_token_time = 9.0  # already late: the floor
    p.plan([decode], [], [])
    assert p.token_budget() == 8 and p.prefill_chunk() == 16  # min_chunk
    decode.last_token_time = 10.0
    lst_low = p.latest_start(decode)
    p.on_step(PolicyContext(mean_step_time=0.01, step_model=model, kv_usage=0.95))
    assert p.latest_start(decode) == pytest.approx(lst_low - 0.01)  # theta 1 -> 2
    p.plan([], [], [req("w")])
    assert p.token_budget() == 256  # no decode waiting on us: full budget


def test_slai_budget_never_leaves_a_running_decode_out():
    """A late decode leaves no slack; the floor must still give every running decode its token,
    else the ones left out are late at the next step, and so on (the budget stuck at min_budget
    with 40 decodes taking turns, 16 a step, was seen in the simulator)."""
    clock = FakeClock(10.0)
    p = make_policy("slo", clock, min_budget=16)
    model = StepTimeModel()
    model.observe(100, 0.02)
    model.observe(10, 0.011)
    p.on_step(PolicyContext(mean_step_time=0.015, step_model=model, max_num_batched_tokens=512))
    decodes = [req(f"d{i}", out=3, status=RequestStatus.RUNNING, tbt_ms=100) for i in range(40)]
    for d in decodes:
        d.last_token_time = 9.5  # all late
    p.plan(decodes, [], [req("w", prompt=300)])
    assert p.token_budget() == 40
    p.plan(decodes[:3], [], [])
    assert p.token_budget() == 16  # fewer decodes than min_budget: min_budget


def test_static_admits_a_new_batch_only_when_the_last_one_is_done():
    p = make_policy("static", FakeClock(), batch_size=2)
    p.on_step(PolicyContext(max_num_seqs=8))
    a, b, c = req("a", t=0), req("b", t=1), req("c", t=2)
    assert ids(p.plan([], [], [c, b, a])) == ["a", "b"]
    a.status = b.status = RequestStatus.RUNNING
    assert ids(p.plan([a, b], [], [c])) == ["a", "b"]
    b.status = RequestStatus.FINISHED
    p.on_finished(b)
    assert ids(p.plan([a], [], [c])) == ["a"]  # a free seat, but c waits for the batch to end
    a.status = RequestStatus.FINISHED
    p.on_finished(a)
    assert ids(p.plan([], [], [c])) == ["c"]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_puts_swapped_before_waiting_of_equal_level(name):
    p = make_policy(name, FakeClock())
    p.on_step(PolicyContext())
    swapped = req("swapped", prompt=8, t=5.0, out=2, status=RequestStatus.SWAPPED)
    waiting = req("waiting", prompt=8, t=1.0)
    plan = p.plan([], [swapped], [waiting])
    if name == "static":  # the swapped request is no member of the batch formed from the queue
        assert ids(plan) == ["waiting"]
    else:
        assert ids(plan)[0] == "swapped"
