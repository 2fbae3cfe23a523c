"""Routing policies: pick a replica for a new request from `LoadReport` snapshots.

Plain classes with one method, `select(replicas, request) -> replica_id`; no Ray, gRPC or torch,
so the router, the unit tests and the simulator run the same objects. A registry maps the
`--routing` name to a class.
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

from shunter.errors import ReplicaUnavailable
from shunter.router.load import LoadReport, RoutingRequest, imbalanced
from shunter.router.prefix_index import PrefixIndex


def _healthy(replicas: Sequence[LoadReport]) -> list[LoadReport]:
    healthy = [r for r in replicas if r.healthy]
    if not healthy:
        raise ReplicaUnavailable("no healthy replica")
    return healthy


def _least_loaded(replicas: Sequence[LoadReport]) -> LoadReport:
    best = replicas[0]
    best_load = best.load
    for r in replicas[1:]:
        load = r.load
        if load < best_load:
            best, best_load = r, load
    return best


class RoutingPolicy:
    """Base: subclasses implement `select`. `needs_prefix` says whether the router must hash prompts."""

    name = "base"
    needs_prefix = False

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        raise NotImplementedError


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
        return _least_loaded(_healthy(replicas)).replica_id


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
        healthy = _healthy(replicas)
        least = _least_loaded(healthy)
        matched = self.index.match(request.block_hashes) if request.block_hashes else {}
        if not matched:
            return least.replica_id
        if self.cost_weight > 0:
            uncached = request.num_prompt_blocks
            best = min(healthy, key=lambda r: r.load + self.cost_weight * (uncached - matched.get(r.replica_id, 0)))
        else:  # longest prefix, then lower load; only the holders need looking at
            best, best_key = least, None
            for r in healthy:
                depth = matched.get(r.replica_id)
                if depth is not None:
                    key = (depth, -r.load)
                    if best_key is None or key > best_key:
                        best, best_key = r, key
        if best is least:
            return best.replica_id
        after = best.load + request.expected_blocks
        if imbalanced(after, least.load, self.abs_threshold, self.rel_threshold):
            return least.replica_id
        return best.replica_id


REGISTRY: dict[str, Callable[..., RoutingPolicy]] = {
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
