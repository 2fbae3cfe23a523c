"""Routing policies over fake replicas: pure logic, no Ray, no gRPC."""
from __future__ import annotations

import random

import pytest

from shunter.errors import ReplicaUnavailable
from shunter.replica.block_hash import block_hashes
from shunter.router.load import LoadReport, RoutingRequest, cdiv, imbalanced
from shunter.router.policies import REGISTRY, make_routing_policy
from shunter.router.prefix_index import PrefixIndex
from tests.fakes import FakeCacheEvent, FakeReplica

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
    assert set(REGISTRY) == {"round_robin", "least_load", "power_of_two", "prefix_aware"}
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


def test_round_robin_cycles():
    policy = make_routing_policy("round_robin")
    reports = [LoadReport(x) for x in "abc"]
    assert [policy.select(reports, RoutingRequest(str(i))) for i in range(6)] == list("abcabc")


def test_least_load_counts_held_expected_queued_and_pending():
    policy = make_routing_policy("least_load")
    reports = [
        LoadReport("a", kv_blocks_in_use=10),
        LoadReport("b", blocks_expected_growth=5, blocks_waiting=4),
        LoadReport("c", kv_blocks_in_use=2, pending_blocks=10),
    ]
    assert policy.select(reports, RoutingRequest("q")) == "b"


def test_power_of_two_never_picks_the_worse_of_its_pair():
    policy = make_routing_policy("power_of_two", seed=1)
    reports = [LoadReport("hot", kv_blocks_in_use=1000)] + [LoadReport(f"c{i}") for i in range(1)]
    assert all(policy.select(reports, RoutingRequest(str(i))) == "c0" for i in range(20))


def test_prefix_index_matches_only_contiguous_prefixes():
    index = PrefixIndex()
    chain = [11, 22, 33]
    index.apply("a", [FakeCacheEvent("stored", h) for h in chain])
    index.apply("b", [FakeCacheEvent("stored", 11), FakeCacheEvent("stored", 33)])
    assert index.match(chain) == {"a": 3, "b": 1}
    index.apply("a", [FakeCacheEvent("evicted", 22)])
    assert index.match(chain) == {"a": 1, "b": 1}
    index.forget("b")
    assert index.match(chain) == {"a": 1}
    assert index.match([99]) == {}


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
    index.apply("a", [FakeCacheEvent("stored", h) for h in block_hashes(list(range(64)), BS)])
    policy = make_routing_policy("prefix_aware", index, abs_threshold=32, rel_threshold=1.5)
    req = request_for("q", list(range(64)) + [7])
    balanced = [LoadReport("a", kv_blocks_in_use=40), LoadReport("b", kv_blocks_in_use=30)]
    assert policy.select(balanced, req) == "a"
    skewed = [LoadReport("a", kv_blocks_in_use=200), LoadReport("b", kv_blocks_in_use=30)]
    assert policy.select(skewed, req) == "b"


def test_hot_prefix_does_not_pile_onto_one_replica():
    """One system prompt, many users: the busiest replica stays within the imbalance threshold."""
    replicas, index = cluster(4), PrefixIndex()
    abs_threshold, rel = 32, 1.5
    policy = make_routing_policy("prefix_aware", index, abs_threshold=abs_threshold, rel_threshold=rel)
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


def test_prefix_aware_cost_weight_trades_cache_for_load():
    index = PrefixIndex()
    prompt = list(range(4 * BS))
    index.apply("a", [FakeCacheEvent("stored", h) for h in block_hashes(prompt, BS)])
    policy = make_routing_policy("prefix_aware", index, cost_weight=1.0)
    req = request_for("q", prompt + [1])
    assert policy.select([LoadReport("a", kv_blocks_in_use=12), LoadReport("b", kv_blocks_in_use=10)], req) == "a"
    assert policy.select([LoadReport("a", kv_blocks_in_use=20), LoadReport("b", kv_blocks_in_use=10)], req) == "b"
