"""Cache-aware ordering of the waiting queue: hits first within a class, never past the
policy's starvation bound, the policy's own order when the queue is too long to score."""
from __future__ import annotations

import random

import pytest

from shunter import SamplingParams
from shunter.clock import FakeClock
from shunter.replica.engine import Engine
from shunter.replica.engine_config import EngineConfig
from shunter.replica.output_collector import OutputCollector
from shunter.replica.policies import make_policy
from shunter.replica.policies.cache_order import CacheAwareOrder
from shunter.replica.request import Request
from tests.replica.fakes import FakeRunner, make_engine, prompt, reference_output, run_to_completion

PREFIX = prompt(64, 4242)  # four blocks


def greedy(n: int, priority: str = "interactive") -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, priority=priority)


def warm(engine: Engine) -> None:
    """Run one request with PREFIX to the end: its blocks stay cached."""
    engine.add_request("warm", PREFIX + prompt(5, 1), greedy(2))
    run_to_completion(engine)


def first_admitted(engine: Engine, ids: list[str]) -> str:
    engine.step()
    return next(r.request_id for r in engine.scheduler.running if r.request_id in ids)


@pytest.mark.parametrize("cache_aware, want", [(True, "hot"), (False, "cold")])
def test_a_request_whose_prefix_is_cached_goes_first(cache_aware, want):
    clock = FakeClock()
    engine = make_engine(clock=clock, policy="fcfs", max_num_seqs=1, cache_aware_order=cache_aware)
    warm(engine)
    engine.add_request("cold", prompt(70, 2), greedy(2))  # arrived first
    clock.advance(0.01)
    engine.add_request("hot", PREFIX + prompt(6, 3), greedy(2))
    assert first_admitted(engine, ["cold", "hot"]) == want
    assert engine.scheduler.requests["hot"].num_cached_tokens in (-1, 64)


def test_only_within_a_class():
    clock = FakeClock()
    engine = make_engine(clock=clock, policy="priority", max_num_seqs=1, cache_aware_order=True)
    warm(engine)
    engine.add_request("hot-batch", PREFIX + prompt(6, 3), greedy(2, "batch"))
    engine.add_request("cold-interactive", prompt(70, 2), greedy(2))
    assert first_admitted(engine, ["hot-batch", "cold-interactive"]) == "cold-interactive"


def test_past_the_scored_head_the_queue_keeps_the_policy_order():
    clock = FakeClock()
    policy = make_policy("fcfs", clock)
    waiting = [Request(f"r{i}", prompt(40 + 20 * i, i), greedy(1), arrival_time=float(i)) for i in range(4)]
    everything_cached = lambda hashes: len(hashes)  # noqa: E731  (more blocks, more cached)
    head = CacheAwareOrder(block_size=16, max_scored=2).reorder(list(waiting), policy, everything_cached)
    assert head == [waiting[1], waiting[0], waiting[2], waiting[3]]
    whole = CacheAwareOrder(block_size=16).reorder(list(waiting), policy, everything_cached)
    assert whole == waiting[::-1]


def test_static_batching_refuses_cache_aware_order():
    with pytest.raises(ValueError, match="^cache_aware_order: static"):
        EngineConfig(policy="static", cache_aware_order=True)


BOUNDED = {"fcfs": {}, "priority": {"aging_s": 1.0}, "sjf": {"max_wait_s": 1.0}, "mlq": {"aging_s": 1.0},
           "slo": {"starvation_s": 1.0}, "rad": {"aging_s": 1.0}}


def closed_loop(policy: str, seed: int, bound_s: float | None = None) -> tuple[float, dict[str, float]]:
    """Hot clients (PREFIX, always cached) in a closed loop, each sending again as soon as its
    request ends, so a hot request always waits; cold requests (no cached prefix) arrive at
    random times. Returns the policy's bound and every cold request's wait for a seat (inf: it
    never got one). `bound_s` overrides the policy's bound (to show the bound is what helps)."""
    rng = random.Random(seed)
    clock = FakeClock()
    step_s = rng.choice([0.01, 0.02]) if policy != "fcfs" else 0.1  # fcfs: the fixed 30 s default bound
    config = EngineConfig(model="fake", num_kv_blocks=256, check_invariants=True, policy=policy,
                          policy_settings=BOUNDED[policy], max_num_seqs=rng.choice([1, 2]),
                          max_num_batched_tokens=rng.choice([32, 64]), cache_aware_order=True)
    engine = Engine(config, clock=clock, runner=FakeRunner(256, clock=clock, step_time=step_s))
    if bound_s is not None:
        engine.scheduler.policy.__class__ = type("Unbounded", (type(engine.scheduler.policy),),
                                                 {"starvation_bound_s": property(lambda self: bound_s)})
    bound = engine.scheduler.policy.starvation_bound_s if bound_s is None else bound_s
    horizon = 5 * (bound if bound_s is None else 30.0 if policy == "fcfs" else 1.0)
    sent = 0

    def send_hot() -> None:
        nonlocal sent
        sent += 1
        engine.add_request(f"hot-{sent}", PREFIX + prompt(rng.randint(1, 20), 10_000 + sent), greedy(rng.randint(1, 6)))

    for _ in range(config.max_num_seqs + rng.randint(2, 3)):  # at least two always waiting
        send_hot()
    cold_at = sorted(rng.uniform(0.1, horizon * 0.6) for _ in range(rng.randint(3, 6)))
    colds: dict[str, Request] = {}
    collector = OutputCollector()
    while clock.now() < horizon:
        while cold_at and cold_at[0] <= clock.now():
            rid = f"cold-{len(colds)}"
            engine.add_request(rid, prompt(rng.randint(20, 80), len(colds)), greedy(rng.randint(1, 6)))
            colds[rid] = engine.scheduler.requests[rid]
            cold_at.pop(0)
        for out in collector.fold(engine.step()):
            if out.request_id.startswith("hot"):
                send_hot()
    waits = {rid: (r.first_scheduled_time - r.arrival_time) if r.first_scheduled_time is not None else float("inf")
             for rid, r in colds.items()}
    return bound, waits


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("policy", sorted(BOUNDED))
def test_no_request_waits_past_the_starvation_bound(policy, seed):
    """However the cached requests keep coming, a cold request is admitted within the policy's
    bound plus the time a seat takes to free (here well under a second)."""
    bound, waits = closed_loop(policy, seed)
    assert waits and max(waits.values()) <= bound + 0.5, waits


def test_without_the_bound_a_cold_request_starves():
    """The same closed loop with the bound lifted: the cold requests never get a seat while the
    hot ones keep coming, which is what the bound above prevents."""
    _, waits = closed_loop("priority", seed=0, bound_s=1e9)
    assert all(w == float("inf") for w in waits.values()), waits


@pytest.mark.parametrize("policy", ["fcfs", "rad", "slo"])
def test_cache_aware_tokens_equal_the_reference(policy):
    engine = make_engine(num_blocks=24, policy=policy, max_num_seqs=3, max_num_batched_tokens=48,
                         cache_aware_order=True)
    expected = {}
    for i in range(12):
        p = (PREFIX if i % 3 else prompt(48, 77)) + prompt(3 + i, i)
        engine.add_request(f"r{i}", p, greedy(12))
        expected[f"r{i}"] = reference_output(p, 12, ignore_eos=True)
    assert run_to_completion(engine) == expected
    assert engine.stats().prefix_hits > 0
