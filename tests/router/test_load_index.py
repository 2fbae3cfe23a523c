"""Indexed routing decisions equal the scans they replace: every policy, over thousands of load
reports, health changes, rejoins and cache events, with many ties, chooses the same replica from
the `LoadIndex` (`choose`) as from the list of every report (`select`); with prefill-only
replicas (P/D disaggregation) as well, in their pool apart."""
from __future__ import annotations

import random

import pytest

from shunter.errors import ReplicaUnavailable
from shunter.replica.block_hash import block_hashes
from shunter.replica.engine_protocol import CacheEvent
from shunter.router.routing import LoadIndex, LoadReport, PrefixIndex, RoutingRequest, make_routing_policy
from shunter.router.routing.disaggregation import Disaggregated
from shunter.router.routing.policies import SizeSpecialized

SETTINGS = {
    "random": {"seed": 3}, "round_robin": {}, "least_load": {}, "power_of_two": {"seed": 5},
    "prefix_aware": {"abs_threshold": 6, "rel_threshold": 1.3},
    "prefix_aware_cost": {"abs_threshold": 6, "rel_threshold": 1.3, "cost_weight": 0.75},
    # Replicas with a CPU tier: cache events of both tiers, blocks credited by tier.
    "prefix_aware_tiers": {"abs_threshold": 6, "rel_threshold": 1.3, "cpu_credit": 0.75},
}


def make_pair(name: str, index: PrefixIndex, size_threshold: int | None, prefill_threshold: int | None = None):
    """Two identical policies (same seeds): one decides by scanning, one from the index."""
    base = "prefix_aware" if name.startswith("prefix_aware") else name
    made = []
    for _ in range(2):
        policy = make_routing_policy(base, index if base == "prefix_aware" else None, **SETTINGS[name])
        policy = policy if size_threshold is None else SizeSpecialized(policy, size_threshold)
        made.append(policy if prefill_threshold is None else Disaggregated(policy, index, prefill_threshold))
    return made


def decide(fn):
    try:
        return fn()
    except ReplicaUnavailable:
        return "unavailable"


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize(("size_threshold", "pd"), [(None, False), (12, False), (None, True), (12, True)])
def test_indexed_decisions_equal_the_scan(name, size_threshold, pd):
    rng = random.Random(hash((name, size_threshold, pd)) & 0xFFFF)
    n = 24
    prefixes = [[rng.randrange(1, 999) for _ in range(16 * 8)] for _ in range(6)]
    chains = [block_hashes(p, 16) for p in prefixes]
    index = PrefixIndex()
    reports = [LoadReport(f"r{i}", large_cache=i % 5 == 0, prefill_only=pd and i % 6 == 3) for i in range(n)]
    loads = LoadIndex(reports)
    scan, indexed = make_pair(name, index, size_threshold, 48 if pd else None)
    decisions = 0
    for step in range(4000):
        i = rng.randrange(n)
        r = reports[i]
        what = rng.random()
        if what < 0.35:  # a poll: new stats, pending gone (small values: many ties)
            r.kv_blocks_in_use, r.blocks_expected_growth = rng.randrange(0, 8), rng.randrange(0, 4)
            r.blocks_waiting, r.pending_blocks = rng.randrange(0, 3), 0
            loads.update(r)
        elif what < 0.5:  # placed here: pending until the next report
            r.pending_blocks += rng.randrange(1, 6)
            loads.update(r)
        elif what < 0.56:  # down, or back
            r.healthy = not r.healthy
            loads.update(r)
        elif what < 0.58:  # a restart: a fresh report object
            reports[i] = LoadReport(r.replica_id, large_cache=r.large_cache, prefill_only=r.prefill_only)
            loads.put(reports[i])
            index.forget(r.replica_id)
        elif what < 0.75:  # cache events
            chain = rng.choice(chains)
            depth = rng.randrange(1, len(chain))
            kind = "stored" if rng.random() < 0.7 else "evicted"
            tier = rng.choice(("device", "cpu")) if name.endswith("tiers") else "device"
            index.apply(r.replica_id, [CacheEvent(kind, h, tier) for h in chain[:depth]])
        else:  # a decision
            prompt = rng.choice(prefixes)[: 16 * rng.randrange(1, 8)] + [rng.randrange(1, 999) for _ in range(5)]
            hashes = block_hashes(prompt, 16)
            request = RoutingRequest(f"q{step}", hashes, len(hashes) + 1, len(hashes) + rng.randrange(1, 20),
                                     len(prompt), 16)
            want = decide(lambda: scan.select(list(reports), request))
            got = decide(lambda: indexed.choose(loads, request))
            assert got == want, (step, name, want, got)
            if pd and got != "unavailable":
                long = indexed.uncached_tokens(request, lambda rid: (q := loads.report(rid)) is not None
                                               and q.healthy) > 48
                pool = {r.replica_id for r in reports if r.prefill_only and r.healthy}
                decode_up = any(r.healthy and not r.prefill_only for r in reports)
                assert (got in pool) == bool(pool and (long or not decode_up)), (step, got, long)
            decisions += 1
    assert decisions > 800


def test_the_index_survives_many_more_changes_than_replicas():
    """Stale entries are dropped as they surface and the heap is rebuilt past 4x the replicas."""
    reports = [LoadReport(f"r{i}") for i in range(3)]
    loads = LoadIndex(reports)
    for k in range(1000):
        reports[k % 3].kv_blocks_in_use = 1000 - k
        loads.update(reports[k % 3])
        assert len(loads._heap) <= 4 * 3 + 64 + 1
    assert loads.least() is min(reports, key=lambda r: (r.load, reports.index(r)))
    for r in reports:
        r.healthy = False
        loads.update(r)
    assert loads.least() is None
    with pytest.raises(ReplicaUnavailable):
        loads.healthy()
