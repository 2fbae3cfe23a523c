"""Routing policies: pick a replica for a new request from `LoadReport` snapshots.

Plain classes with one method, `select(replicas, request) -> replica_id`; no Ray, gRPC or torch,
so the router and the unit tests run the same objects. A registry maps the
`--routing` name to a class.
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

from shunter.errors import ReplicaUnavailable
from shunter.router.routing.load import LoadReport, RoutingRequest, imbalanced
from shunter.router.routing.prefix_index import PrefixIndex


def _healthy(replicas: Sequence[LoadReport]) -> list[LoadReport]:
    healthy = [r for r in replicas if r.healthy]
    if not healthy:
        raise ReplicaUnavailable("no healthy replica")
    return healthy


def _load(r: LoadReport) -> int:
    """`LoadReport.load`, spelled out where a decision reads it once per replica: the property
    call was ~40% of a 64-replica decision (tests/router/test_policies.py checks they agree)."""
    return r.kv_blocks_in_use + r.blocks_expected_growth + r.blocks_waiting + r.pending_blocks


def _least_loaded(replicas: Sequence[LoadReport]) -> LoadReport:
    """The healthy replica with the lowest load (the first of equals), in one pass."""
    best, best_load = None, 0
    for r in replicas:
        if r.healthy:
            load = r.kv_blocks_in_use + r.blocks_expected_growth + r.blocks_waiting + r.pending_blocks  # _load(r)
            if best is None or load < best_load:
                best, best_load = r, load
    if best is None:
        raise ReplicaUnavailable("no healthy replica")
    return best


class RoutingPolicy:
    """Base: subclasses implement `select`. `needs_prefix` says whether the router must hash prompts."""

    name = "base"
    needs_prefix = False

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        raise NotImplementedError


class Random(RoutingPolicy):
    """Baseline: a uniformly random healthy replica (seeded); what cache-aware routers are measured against."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        return self._rng.choice(_healthy(replicas)).replica_id


class RoundRobin(RoutingPolicy):
    """Baseline: ignores load; fair only when every request costs the same."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        healthy = _healthy(replicas)
        choice = healthy[self._next % len(healthy)]
        self._next += 1
        return choice.replica_id


class LeastLoad(RoutingPolicy):
    """Greedy: the replica with the fewest blocks held, expected and queued."""

    name = "least_load"

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        return _least_loaded(replicas).replica_id


class PowerOfTwo(RoutingPolicy):
    """Two random replicas, the less loaded wins: O(1) and robust to stale reports, because two
    routers with the same stale view do not all pick the same replica."""

    name = "power_of_two"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        healthy = _healthy(replicas)
        if len(healthy) == 1:
            return healthy[0].replica_id
        a, b = self._rng.sample(healthy, 2)
        return (a if a.load <= b.load else b).replica_id


class PrefixAware(RoutingPolicy):
    """The replica holding the longest cached prefix of the request, while loads stay balanced.

    If sending the request to the prefix holder would leave the cluster imbalanced (by both
    `abs_threshold` blocks and `rel_threshold` times), fall back to least load: a hot prefix
    must not pile every request onto one replica (the fallback then seeds the prefix elsewhere).
    `cost_weight` > 0 scores replicas by load + weight * uncached prompt blocks instead of
    longest prefix first, trading cache reuse against load.
    """

    name = "prefix_aware"
    needs_prefix = True

    def __init__(
        self, prefix_index: PrefixIndex | None = None, abs_threshold: int = 32, rel_threshold: float = 1.5,
        cost_weight: float = 0.0,
    ) -> None:
        self.index = prefix_index if prefix_index is not None else PrefixIndex()
        self.abs_threshold, self.rel_threshold, self.cost_weight = abs_threshold, rel_threshold, cost_weight

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        matched = self.index.match(request.block_hashes) if request.block_hashes else None
        if self.cost_weight > 0 and matched:
            return self._by_cost(replicas, request, matched)
        # One pass: each replica's load read once; the least loaded (first of equals) and the
        # holder of the longest prefix (then the lower load, then the first) side by side.
        least = best = None
        least_load = best_load = best_depth = 0
        for r in replicas:
            if not r.healthy:
                continue
            load = r.kv_blocks_in_use + r.blocks_expected_growth + r.blocks_waiting + r.pending_blocks  # _load(r)
            if least is None or load < least_load:
                least, least_load = r, load
            if matched:
                depth = matched.get(r.replica_id)
                if depth is not None and (best is None or depth > best_depth or (depth == best_depth and load < best_load)):
                    best, best_load, best_depth = r, load, depth
        if least is None:
            raise ReplicaUnavailable("no healthy replica")
        if best is None or best is least:
            return least.replica_id
        if imbalanced(best_load + request.expected_blocks, least_load, self.abs_threshold, self.rel_threshold):
            return least.replica_id
        return best.replica_id

    def _by_cost(self, replicas: Sequence[LoadReport], request: RoutingRequest, matched: dict[str, int]) -> str:
        """Lowest load + weight * uncached prompt blocks, unless that leaves loads imbalanced."""
        uncached, weight = request.num_prompt_blocks, self.cost_weight
        least = best = None
        least_load = best_load = 0
        best_cost = 0.0
        for r in replicas:
            if not r.healthy:
                continue
            load = _load(r)
            if least is None or load < least_load:
                least, least_load = r, load
            cost = load + weight * (uncached - matched.get(r.replica_id, 0))
            if best is None or cost < best_cost:
                best, best_load, best_cost = r, load, cost
        if least is None:
            raise ReplicaUnavailable("no healthy replica")
        if best is least:
            return least.replica_id
        if imbalanced(best_load + request.expected_blocks, least_load, self.abs_threshold, self.rel_threshold):
            return least.replica_id
        return best.replica_id


class SizeSpecialized(RoutingPolicy):
    """Cache-size specialization over another policy: a request expected to take more than
    `size_threshold_blocks` goes to the least loaded healthy large-cache replica, so long requests
    do not crowd the small pools into preemption; short requests, and long ones while no
    large-cache replica is healthy, are routed by `inner`."""

    def __init__(self, inner: RoutingPolicy, size_threshold_blocks: int) -> None:
        self.inner, self.size_threshold_blocks = inner, size_threshold_blocks
        self.name, self.needs_prefix = inner.name, inner.needs_prefix

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        if request.expected_blocks > self.size_threshold_blocks:
            large = [r for r in replicas if r.large_cache and r.healthy]
            if large:
                return _least_loaded(large).replica_id
        return self.inner.select(replicas, request)


REGISTRY: dict[str, Callable[..., RoutingPolicy]] = {
    Random.name: Random,
    RoundRobin.name: RoundRobin,
    LeastLoad.name: LeastLoad,
    PowerOfTwo.name: PowerOfTwo,
    PrefixAware.name: PrefixAware,
}
DEFAULT = PrefixAware.name


def make_routing_policy(name: str, prefix_index: PrefixIndex | None = None, **settings) -> RoutingPolicy:
    if name not in REGISTRY:
        raise ValueError(f"routing must be one of {sorted(REGISTRY)}, got {name!r}")
    if name == PrefixAware.name:
        return PrefixAware(prefix_index, **settings)
    return REGISTRY[name](**settings)
