"""Routing policies over fake replicas: pure logic, no Ray, no gRPC."""
from __future__ import annotations

import dataclasses
import random

import pytest

from shunter.errors import ReplicaUnavailable
from shunter.mathutil import cdiv
from shunter.replica.block_hash import block_hashes
from shunter.replica.engine_protocol import CacheEvent
from shunter.router.routing import LoadReport, RoutingRequest, imbalanced
from shunter.router.routing.policies import REGISTRY, PrefixAware, SizeSpecialized, make_routing_policy
from shunter.router.routing import PrefixIndex
from tests.fakes import FakeReplica

BS = 16


def request_for(request_id: str, prompt: list[int], max_tokens: int = 32) -> RoutingRequest:
    return RoutingRequest(request_id, block_hashes(prompt, BS), cdiv(len(prompt), BS), cdiv(len(prompt) + max_tokens, BS))


def route(policy, replicas: dict[str, FakeReplica], index: PrefixIndex | None, rid: str, prompt, max_tokens=32) -> str:
    """One routing decision, then the replica takes the request and its cache events reach the index."""
    chosen = policy.select([r.report() for r in replicas.values()], request_for(rid, prompt, max_tokens))
    replicas[chosen].admit(rid, prompt, max_tokens)
    if index is not None:
        for r in replicas.values():
            index.apply(r.replica_id, r.drain_cache_events())
    return chosen


def cluster(n: int) -> dict[str, FakeReplica]:
    return {f"r{i}": FakeReplica(f"r{i}") for i in range(n)}


def test_registry_names_and_unknown_name():
    assert set(REGISTRY) == {"random", "round_robin", "least_load", "power_of_two", "prefix_aware"}
    with pytest.raises(ValueError, match="routing"):
        make_routing_policy("nope")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_policy_skips_unhealthy_and_raises_when_none(name):
    policy = make_routing_policy(name)
    reports = [LoadReport("a", healthy=False), LoadReport("b", kv_blocks_in_use=500)]
    for i in range(5):
        assert policy.select(reports, RoutingRequest(f"q{i}")) == "b"
    with pytest.raises(ReplicaUnavailable):
        policy.select([LoadReport("a", healthy=False)], RoutingRequest("q"))


def test_random_is_seeded_and_roughly_uniform():
    reports = [LoadReport(x, kv_blocks_in_use=100 * i) for i, x in enumerate("abcd")]
    policy = make_routing_policy("random", seed=3)
    picks = [policy.select(reports, RoutingRequest(str(i))) for i in range(800)]
    again = make_routing_policy("random", seed=3)
    assert picks == [again.select(reports, RoutingRequest(str(i))) for i in range(800)]
    assert all(abs(picks.count(x) / 800 - 0.25) < 0.06 for x in "abcd")  # load is ignored


def test_round_robin_cycles():
    policy = make_routing_policy("round_robin")
    reports = [LoadReport(x) for x in "abc"]
    assert [policy.select(reports, RoutingRequest(str(i))) for i in range(6)] == list("abcabc")


TERMS = ("kv_blocks_in_use", "blocks_expected_growth", "blocks_waiting", "pending_blocks")


def test_least_load_counts_each_of_the_four_terms():
    """r0 is least loaded counting all four terms (40 against 41); without any one term, the
    replica that is heavy in just that term (20 of its 41) becomes the least loaded instead."""
    reports = [LoadReport("r0", **{t: 10 for t in TERMS})]
    for i, heavy in enumerate(TERMS, start=1):
        reports.append(LoadReport(f"r{i}", **{t: 20 if t == heavy else 7 for t in TERMS}))
    assert make_routing_policy("least_load").select(reports, RoutingRequest("q")) == "r0"
    for i, dropped in enumerate(TERMS, start=1):
        without = [dataclasses.replace(r, **{dropped: 0}) for r in reports]
        assert make_routing_policy("least_load").select(without, RoutingRequest("q")) == f"r{i}", dropped


def test_power_of_two_picks_the_lighter_of_a_seeded_pair():
    """Five replicas of distinct loads: each pick is the lighter of two drawn without
    replacement, so the heaviest is never chosen, the lightest often, and a seed repeats it all."""
    reports = [LoadReport(f"r{i}", kv_blocks_in_use=10 * i) for i in range(5)]
    policy = make_routing_policy("power_of_two", seed=7)
    picks = [policy.select(reports, RoutingRequest(str(i))) for i in range(400)]
    again = make_routing_policy("power_of_two", seed=7)
    assert picks == [again.select(reports, RoutingRequest(str(i))) for i in range(400)]
    counts = {r.replica_id: picks.count(r.replica_id) for r in reports}
    assert counts["r4"] == 0  # the heaviest loses every pair it is in
    # r_i wins a pair when drawn with a heavier one: P = 2 * (4 - i) / 20 = 0.4, 0.3, 0.2, 0.1.
    for i, p in enumerate((0.4, 0.3, 0.2, 0.1)):
        assert abs(counts[f"r{i}"] / 400 - p) < 0.08, counts
    other = make_routing_policy("power_of_two", seed=8)
    assert [other.select(reports, RoutingRequest(str(i))) for i in range(400)] != picks


def test_prefix_index_matches_only_contiguous_prefixes():
    index = PrefixIndex()
    chain = [11, 22, 33]
    index.apply("a", [CacheEvent("stored", h) for h in chain])
    index.apply("b", [CacheEvent("stored", 11), CacheEvent("stored", 33)])
    assert index.match(chain) == {"a": 3, "b": 1}
    index.apply("a", [CacheEvent("evicted", 22)])
    assert index.match(chain) == {"a": 1, "b": 1}
    index.forget("b")
    assert index.match(chain) == {"a": 1}
    assert index.match([99]) == {}


def test_the_index_keeps_tiers_apart_and_credits_cpu_blocks_less():
    index, chain = PrefixIndex(), [11, 22, 33, 44]
    index.apply("a", [CacheEvent("stored", h) for h in chain[:2]] + [CacheEvent("stored", h, "cpu") for h in chain])
    index.apply("b", [CacheEvent("stored", h) for h in chain[:3]])
    assert index.credited(chain, 0.75) == {"a": 2 + 0.75 * 2, "b": 3} and index.num_cpu_entries == 4
    index.apply("a", [CacheEvent("evicted", h) for h in chain[:2]])  # the device evicts; the CPU copies stay
    assert index.match(chain) == {"a": 4, "b": 3} and index.credited(chain, 0.75) == {"a": 3.0, "b": 3}
    assert index.credited(chain, 0.0) == {"b": 3}  # credit 0: a CPU-only holder is no holder
    index.apply("a", [CacheEvent("evicted", 11, "cpu")])
    assert index.match(chain) == {"b": 3} and index.num_cpu_entries == 3
    index.forget("a")
    assert index.num_cpu_entries == 0 and index.credited(chain, 0.75) == {"b": 3}


def test_prefix_aware_weighs_a_cpu_tier_prefix_against_a_shorter_device_one():
    index = PrefixIndex()
    chain = block_hashes(list(range(16 * BS)), BS)
    index.apply("cpu", [CacheEvent("stored", h, "cpu") for h in chain])  # 16 blocks, all in the CPU tier: 12
    index.apply("device", [CacheEvent("stored", h) for h in chain[:10]])  # 10 on the device: 10
    replicas = [LoadReport("cpu"), LoadReport("device"), LoadReport("idle")]
    request = RoutingRequest("q", chain, 17, 18)
    assert make_routing_policy("prefix_aware", index).select(replicas, request) == "cpu"
    assert make_routing_policy("prefix_aware", index, cpu_credit=0.5).select(replicas, request) == "device"
    with pytest.raises(ValueError, match="cpu_credit must be in"):
        make_routing_policy("prefix_aware", index, cpu_credit=1.5)


def test_prefix_aware_sends_a_shared_prefix_to_its_holder():
    replicas, index = cluster(4), PrefixIndex()
    policy = make_routing_policy("prefix_aware", index)
    doc = list(range(100, 100 + 8 * BS))
    first = route(policy, replicas, index, "q0", doc + [1, 2, 3])
    # Unrelated requests spread; the one sharing the document goes to the holder.
    for i in range(3):
        route(policy, replicas, index, f"x{i}", [500 + i] * 40, max_tokens=8)
    assert route(policy, replicas, index, "q1", doc + [4, 5, 6]) == first
    assert replicas[first].admit("probe", doc, 1) == len(doc)


def test_prefix_aware_falls_back_to_least_load_when_imbalanced():
    index = PrefixIndex()
    index.apply("a", [CacheEvent("stored", h) for h in block_hashes(list(range(64)), BS)])
    policy = make_routing_policy("prefix_aware", index, abs_threshold=32, rel_threshold=1.5)
    req = request_for("q", list(range(64)) + [7])
    balanced = [LoadReport("a", kv_blocks_in_use=40), LoadReport("b", kv_blocks_in_use=30)]
    assert policy.select(balanced, req) == "a"
    skewed = [LoadReport("a", kv_blocks_in_use=200), LoadReport("b", kv_blocks_in_use=30)]
    assert policy.select(skewed, req) == "b"


@pytest.mark.parametrize("per_request", [0, 4])
def test_hot_prefix_does_not_pile_onto_one_replica(per_request):
    """One system prompt, many users: the busiest replica stays within the imbalance threshold
    (in blocks, or in requests of the largest size sent)."""
    replicas, index = cluster(4), PrefixIndex()
    rel = 1.5
    abs_threshold = max(32, per_request * cdiv(12 * BS + 40 + 64, BS))
    policy = make_routing_policy("prefix_aware", index, abs_threshold=32, rel_threshold=rel,
                                 abs_threshold_requests=per_request)
    system = list(range(1, 1 + 12 * BS))
    rng = random.Random(0)
    hits = 0
    for i in range(200):
        user = [rng.randrange(300, 900) for _ in range(rng.randrange(5, 40))]
        chosen = route(policy, replicas, index, f"u{i}", system + user, max_tokens=64)
        hits += replicas[chosen].admit(f"probe{i}", system, 1) > 0
        replicas[chosen].finish(f"probe{i}")
        if i >= 40:  # steady state: old requests finish
            for r in replicas.values():
                r.finish(f"u{i - 40}")
        loads = [r.report().load for r in replicas.values()]
        one_request = cdiv(len(system) + 40 + 64, BS)
        assert not imbalanced(max(loads), min(loads) + one_request, abs_threshold, rel), loads
    assert hits == 200  # every replica ends up holding the hot prefix, so every request still hits
    assert all(r.cached for r in replicas.values())


def test_the_guard_grows_with_the_request_when_counted_in_requests():
    """A long context is hundreds of blocks: a guard of 32 blocks sends it away from its holder
    for a difference smaller than itself; counted in requests of its size, it stays."""
    index = PrefixIndex()
    context = list(range(256 * BS))  # 256 blocks
    index.apply("a", [CacheEvent("stored", h) for h in block_hashes(context, BS)])
    req = request_for("q", context + [7], max_tokens=64)  # 262 blocks expected
    loads = [LoadReport("a", kv_blocks_in_use=600), LoadReport("b", kv_blocks_in_use=300)]
    assert PrefixAware(index, abs_threshold_requests=0).select(loads, req) == "b"
    assert PrefixAware(index, abs_threshold_requests=4).select(loads, req) == "a"  # 562 apart < 4 x 262
    far = [LoadReport("a", kv_blocks_in_use=1400), LoadReport("b", kv_blocks_in_use=300)]
    assert PrefixAware(index, abs_threshold_requests=4).select(far, req) == "b"  # 1,362 apart > 1,048
    small = request_for("s", context[: 2 * BS] + [7], max_tokens=8)  # 3 blocks: the 32-block floor holds
    assert PrefixAware(index, abs_threshold_requests=4).select(
        [LoadReport("a", kv_blocks_in_use=70), LoadReport("b", kv_blocks_in_use=30)], small) == "b"
    with pytest.raises(ValueError, match="abs_threshold_requests"):
        PrefixAware(index, abs_threshold_requests=-1)


def test_prefix_aware_cost_weight_trades_cache_for_load():
    index = PrefixIndex()
    prompt = list(range(4 * BS))
    index.apply("a", [CacheEvent("stored", h) for h in block_hashes(prompt, BS)])
    policy = make_routing_policy("prefix_aware", index, cost_weight=1.0)
    req = request_for("q", prompt + [1])
    assert policy.select([LoadReport("a", kv_blocks_in_use=12), LoadReport("b", kv_blocks_in_use=10)], req) == "a"
    assert policy.select([LoadReport("a", kv_blocks_in_use=20), LoadReport("b", kv_blocks_in_use=10)], req) == "b"


def test_policies_read_the_same_load_as_the_report():
    from shunter.router.routing.load_index import load_of

    r = LoadReport("a", kv_blocks_in_use=5, blocks_expected_growth=7, blocks_waiting=11, pending_blocks=13)
    assert load_of(r) == r.load == 36


def _spec_prefix_aware(index: PrefixIndex, replicas, request, abs_t, rel_t, weight) -> str:
    """prefix_aware written the obvious (slow) way: the optimized one must decide the same."""
    healthy = [r for r in replicas if r.healthy]
    least = min(healthy, key=lambda r: r.load)  # min keeps the first of equals

    def depth(r) -> int:
        held, d = index.by_replica.get(r.replica_id, set()), 0
        while d < len(request.block_hashes) and request.block_hashes[d] in held:
            d += 1
        return d

    depths = {r.replica_id: depth(r) for r in healthy}
    if not any(depths.values()):
        return least.replica_id
    if weight > 0:
        best = min(healthy, key=lambda r: r.load + weight * (request.num_prompt_blocks - depths[r.replica_id]))
    else:
        best = max((r for r in healthy if depths[r.replica_id]), key=lambda r: (depths[r.replica_id], -r.load))
    if best is least or imbalanced(best.load + request.expected_blocks, least.load, abs_t, rel_t):
        return least.replica_id
    return best.replica_id


def test_prefix_aware_decides_as_its_plain_specification_on_random_clusters():
    rng = random.Random(7)
    for _ in range(200):
        n = rng.choice([1, 2, 5, 16])
        chains = [[rng.randrange(1, 50) for _ in range(rng.randrange(1, 10))] for _ in range(5)]
        index, replicas = PrefixIndex(), []
        for i in range(n):
            events = [CacheEvent("stored", h) for c in rng.sample(chains, 2) for h in c[: rng.randrange(0, len(c) + 1)]]
            events += [CacheEvent("evicted", rng.randrange(1, 50)) for _ in range(rng.randrange(0, 3))]
            index.apply(f"r{i}", events)
            replicas.append(LoadReport(f"r{i}", healthy=i == 0 or rng.random() > 0.2, kv_blocks_in_use=rng.randrange(0, 60),
                                       blocks_expected_growth=rng.randrange(0, 4), pending_blocks=rng.randrange(0, 3)))
        for _ in range(10):
            hashes = rng.choice(chains) + [rng.randrange(1, 50) for _ in range(rng.randrange(0, 3))]
            request = RoutingRequest("q", hashes, rng.randrange(1, 10), rng.randrange(1, 30))
            for abs_t, per_request, rel_t, weight in ((32, 0, 1.5, 0.0), (0, 0, 1.0, 0.0), (8, 0, 1.2, 2.0),
                                                      (32, 4, 1.5, 0.0), (4, 2.5, 1.2, 2.0)):
                policy = PrefixAware(index, abs_threshold=abs_t, rel_threshold=rel_t, cost_weight=weight,
                                     abs_threshold_requests=per_request)
                guard = max(abs_t, per_request * request.expected_blocks)
                want = _spec_prefix_aware(index, replicas, request, guard, rel_t, weight)
                assert policy.select(replicas, request) == want


# ---- cache-size specialization -------------------------------------------------------------
def test_size_specialized_sends_long_requests_to_the_least_loaded_large_replica():
    policy = SizeSpecialized(make_routing_policy("least_load"), size_threshold_blocks=8)
    reports = [LoadReport("s"), LoadReport("L1", kv_blocks_in_use=30, large_cache=True),
               LoadReport("L2", kv_blocks_in_use=20, large_cache=True)]
    assert policy.select(reports, RoutingRequest("long", expected_blocks=9)) == "L2"
    assert policy.select(reports, RoutingRequest("at-threshold", expected_blocks=8)) == "s"  # the inner policy's


def test_size_specialized_routes_long_requests_normally_without_a_healthy_large_replica():
    policy = SizeSpecialized(make_routing_policy("least_load"), size_threshold_blocks=8)
    reports = [LoadReport("s", kv_blocks_in_use=5), LoadReport("t"), LoadReport("L", healthy=False, large_cache=True)]
    assert policy.select(reports, RoutingRequest("long", expected_blocks=50)) == "t"


def test_size_specialized_leaves_short_requests_to_the_inner_policy():
    index = PrefixIndex()
    prompt = list(range(4 * BS))
    index.apply("L", [CacheEvent("stored", h) for h in block_hashes(prompt, BS)])
    policy = SizeSpecialized(make_routing_policy("prefix_aware", index), size_threshold_blocks=8)
    assert policy.name == "prefix_aware" and policy.needs_prefix
    reports = [LoadReport("s"), LoadReport("L", kv_blocks_in_use=4, large_cache=True)]
    assert policy.select(reports, request_for("short", prompt + [1], max_tokens=8)) == "L"  # its prefix holder
    assert policy.select(reports, request_for("short2", [7] * 20, max_tokens=8)) == "s"  # least loaded
