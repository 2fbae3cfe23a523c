"""Routing policies: pick a replica for a new request from `LoadReport` snapshots.

Plain classes; no Ray, gRPC or torch, so the router, the simulator and the unit tests run the
same objects. A registry maps the `--routing` name to a class. Each decides twice over, the
same way: `choose(loads, request)` over a `LoadIndex` (what the router and the simulator call:
the least loaded replica is the index's top, the prefix holders come from the prefix index, so
a decision reads no report it does not need), and `select(replicas, request)`, the plain scan
of every report, which is the reference `choose` is checked against (`tests/router/
test_load_index.py`) and the baseline `shunter bench routing` measures it against.
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

from shunter.errors import ReplicaUnavailable
from shunter.router.routing.load import LoadReport, RoutingRequest, imbalanced
from shunter.router.routing.load_index import LoadIndex, load_of
from shunter.router.routing.prefix_index import PrefixIndex


def _healthy(replicas: Sequence[LoadReport]) -> list[LoadReport]:
    healthy = [r for r in replicas if r.healthy]
    if not healthy:
        raise ReplicaUnavailable("no healthy replica")
    return healthy


def _least_loaded(replicas: Sequence[LoadReport]) -> LoadReport:
    """The healthy replica with the lowest load (the first of equals), in one pass."""
    best, best_load = None, 0
    for r in replicas:
        if r.healthy:
            load = r.kv_blocks_in_use + r.blocks_expected_growth + r.blocks_waiting + r.pending_blocks  # load_of(r)
            if best is None or load < best_load:
                best, best_load = r, load
    if best is None:
        raise ReplicaUnavailable("no healthy replica")
    return best


class RoutingPolicy:
    """Base: subclasses implement `choose` and `select` (the same decision, indexed and scanned).
    `needs_prefix` says whether the router must hash prompts."""

    name = "base"
    needs_prefix = False

    def choose(self, loads: LoadIndex, request: RoutingRequest) -> str:
        raise NotImplementedError

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        raise NotImplementedError


class Random(RoutingPolicy):
    """Baseline: a uniformly random healthy replica (seeded); what cache-aware routers are measured against."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def choose(self, loads: LoadIndex, request: RoutingRequest) -> str:
        return self._rng.choice(loads.healthy()).replica_id

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        return self._rng.choice(_healthy(replicas)).replica_id


class RoundRobin(RoutingPolicy):
    """Baseline: ignores load; fair only when every request costs the same."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, loads: LoadIndex, request: RoutingRequest) -> str:
        return self._turn(loads.healthy())

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        return self._turn(_healthy(replicas))

    def _turn(self, healthy: list[LoadReport]) -> str:
        choice = healthy[self._next % len(healthy)]
        self._next += 1
        return choice.replica_id


class LeastLoad(RoutingPolicy):
    """Greedy: the replica with the fewest blocks held, expected and queued."""

    name = "least_load"

    def choose(self, loads: LoadIndex, request: RoutingRequest) -> str:
        return loads.least_or_raise().replica_id

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        return _least_loaded(replicas).replica_id


class PowerOfTwo(RoutingPolicy):
    """Two random replicas, the less loaded wins: O(1) and robust to stale reports, because two
    routers with the same stale view do not all pick the same replica."""

    name = "power_of_two"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def choose(self, loads: LoadIndex, request: RoutingRequest) -> str:
        return self._pick(loads.healthy())

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        return self._pick(_healthy(replicas))

    def _pick(self, healthy: list[LoadReport]) -> str:
        if len(healthy) == 1:
            return healthy[0].replica_id
        a, b = self._rng.sample(healthy, 2)
        return (a if a.load <= b.load else b).replica_id


class PrefixAware(RoutingPolicy):
    """The replica holding the longest cached prefix of the request, while loads stay balanced.

    If sending the request to the prefix holder would leave the cluster imbalanced (by both
    `abs_threshold` blocks, or `abs_threshold_requests` of the request's own blocks if more, and
    `rel_threshold` times), fall back to least load: a hot prefix must not pile every request
    onto one replica (the fallback then seeds the prefix elsewhere).
    `cost_weight` > 0 scores replicas by load + weight * uncached prompt blocks instead of
    longest prefix first, trading cache reuse against load. Where replicas report a CPU tier, a
    block only there counts `cpu_credit` of a device block (`PrefixIndex.credited`; Dynamo's KV
    router credits 0.75): the prefix is weighed, not just its length.
    """

    name = "prefix_aware"
    needs_prefix = True

    def __init__(
        self, prefix_index: PrefixIndex | None = None, abs_threshold: int = 32, rel_threshold: float = 1.5,
        cost_weight: float = 0.0, cpu_credit: float = 0.75, abs_threshold_requests: float = 4.0,
    ) -> None:
        if not 0 <= cpu_credit <= 1:
            raise ValueError(f"cpu_credit must be in [0, 1], got {cpu_credit}")
        if abs_threshold_requests < 0:
            raise ValueError(f"abs_threshold_requests must be >= 0, got {abs_threshold_requests}")
        self.index = prefix_index if prefix_index is not None else PrefixIndex()
        self.abs_threshold, self.rel_threshold, self.cost_weight = abs_threshold, rel_threshold, cost_weight
        self.cpu_credit = cpu_credit
        self.abs_threshold_requests = abs_threshold_requests

    def _too_far(self, holder_load: float, least_load: int, request: RoutingRequest) -> bool:
        """The guard: the holder, with this request, beyond the least loaded by both thresholds.
        The absolute one is in blocks, and at least `abs_threshold_requests` of this request's
        own blocks (SGLang counts its threshold in requests; a long context is hundreds of blocks)."""
        threshold = max(self.abs_threshold, self.abs_threshold_requests * request.expected_blocks)
        return imbalanced(holder_load + request.expected_blocks, least_load, threshold, self.rel_threshold)

    def _matched(self, block_hashes: list[int]) -> dict[str, int] | dict[str, float]:
        """Each holder's matched prefix in blocks: credited by tier once a CPU tier is reported."""
        if self.index.num_cpu_entries:
            return self.index.credited(block_hashes, self.cpu_credit)
        return self.index.match(block_hashes)

    def choose(self, loads: LoadIndex, request: RoutingRequest) -> str:
        """`select`'s decision from the index: the least loaded is its top; the replicas holding
        the longest prefix of the prompt come from the prefix index (walked along the prompt's
        chain), the least loaded of them (then the first) is the candidate; no other report is
        read. Linear only in how many replicas hold that prefix."""
        least = loads.least_or_raise()
        if not request.block_hashes:
            return least.replica_id
        if self.cost_weight > 0:
            matched = self._matched(request.block_hashes)
            return self._choose_by_cost(loads, request, matched, least) if matched else least.replica_id
        if self.index.num_cpu_entries:  # tiers: the best credited prefix, which need not be the deepest
            return self._choose_among_healthy(loads, request, least)
        depth, holders = self.index.deepest(request.block_hashes)
        if not depth:
            return least.replica_id
        best, best_key = None, None
        for rid in holders:
            r = loads.report(rid)
            if r is not None and r.healthy:
                key = (load_of(r), loads.position(rid))
                if best_key is None or key < best_key:
                    best, best_key = r, key
        if best is None:  # every deepest holder is down (the router forgets a dead replica's blocks, a scan need not)
            return self._choose_among_healthy(loads, request, least)
        if best is least:
            return least.replica_id
        if self._too_far(best_key[0], load_of(least), request):
            return least.replica_id
        return best.replica_id

    def _choose_among_healthy(self, loads: LoadIndex, request: RoutingRequest, least: LoadReport) -> str:
        """The healthy holders at every depth, as the scan weighs them: where every deepest holder
        is down (its blocks not yet forgotten), and where tiers make depth not the whole measure."""
        best, best_key = None, None
        for rid, depth in self._matched(request.block_hashes).items():
            r = loads.report(rid)
            if r is not None and r.healthy:
                key = (-depth, load_of(r), loads.position(rid))
                if best_key is None or key < best_key:
                    best, best_key = r, key
        if best is None or best is least:
            return least.replica_id
        if self._too_far(best_key[1], load_of(least), request):
            return least.replica_id
        return best.replica_id

    def _choose_by_cost(self, loads: LoadIndex, request: RoutingRequest, matched: dict[str, int] | dict[str, float],
                        least: LoadReport) -> str:
        """`_by_cost` from the index: a replica that holds none of the prefix costs its load plus
        the whole prompt, so none of them beats the least loaded one (a holder or not): the
        candidates are the holders and the least loaded replica."""
        uncached, weight = request.num_prompt_blocks, self.cost_weight
        best, best_key = None, None
        for r in [loads.report(rid) for rid in matched] + [least]:
            if r is not None and r.healthy:
                load = load_of(r)
                key = (load + weight * (uncached - matched.get(r.replica_id, 0)), loads.position(r.replica_id))
                if best_key is None or key < best_key:
                    best, best_key = r, key
        if best is least:
            return least.replica_id
        if self._too_far(load_of(best), load_of(least), request):
            return least.replica_id
        return best.replica_id

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        matched = self._matched(request.block_hashes) if request.block_hashes else None
        if self.cost_weight > 0 and matched:
            return self._by_cost(replicas, request, matched)
        # One pass: each replica's load read once; the least loaded (first of equals) and the
        # holder of the longest prefix (then the lower load, then the first) side by side.
        least = best = None
        least_load = best_load = best_depth = 0
        for r in replicas:
            if not r.healthy:
                continue
            load = r.kv_blocks_in_use + r.blocks_expected_growth + r.blocks_waiting + r.pending_blocks  # load_of(r)
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
        if self._too_far(best_load, least_load, request):
            return least.replica_id
        return best.replica_id

    def _by_cost(self, replicas: Sequence[LoadReport], request: RoutingRequest,
                 matched: dict[str, int] | dict[str, float]) -> str:
        """Lowest load + weight * uncached prompt blocks, unless that leaves loads imbalanced."""
        uncached, weight = request.num_prompt_blocks, self.cost_weight
        least = best = None
        least_load = best_load = 0
        best_cost = 0.0
        for r in replicas:
            if not r.healthy:
                continue
            load = load_of(r)
            if least is None or load < least_load:
                least, least_load = r, load
            cost = load + weight * (uncached - matched.get(r.replica_id, 0))
            if best is None or cost < best_cost:
                best, best_load, best_cost = r, load, cost
        if least is None:
            raise ReplicaUnavailable("no healthy replica")
        if best is least:
            return least.replica_id
        if self._too_far(best_load, least_load, request):
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

    def choose(self, loads: LoadIndex, request: RoutingRequest) -> str:
        if request.expected_blocks > self.size_threshold_blocks:
            large = loads.least(large_only=True)
            if large is not None:
                return large.replica_id
        return self.inner.choose(loads, request)

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
