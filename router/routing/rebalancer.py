"""Rebalancing: which running requests move to another replica, every `interval_s`.

Routing only places new requests; outputs of unknown length still drift replicas apart. What a
round compares (`measure`):

* `freeness` (the default; `freeness.py`): each replica's free KV blocks, its queue counted in,
  per request growing into them. Replicas about to run out (under `pressure_blocks` each) are
  paired with the freest, several pairs a round, and each gives up the cheapest request that
  relieves it, before its scheduler must preempt.
* the load pairs of before, kept to compare: the most and the least loaded replica are paired
  and decoding requests, heaviest first, move from one to the other until their loads are within
  the thresholds (`abs_threshold` blocks and `rel_threshold` times). `expected` compares each
  replica's `load` and each request's blocks at its expected end, the numbers routing balances;
  `usage` the blocks held now plus queues (`LoadReport.usage`) and each request's blocks held
  now. When outputs are long and of unknown length, every request looks alike to `expected` (it
  counts each at `max_tokens`), so a replica filling up with long answers looks no busier.
  Experiment `rebalance` measures all three.

With cache-size specialization on, a request grown past `size_threshold_blocks` on a small-cache
replica moves to the least loaded large-cache one first, and balancing never sends such a
request back to a small replica (else the two kinds of move would bounce it). Prefill-only
replicas (P/D disaggregation) take no part: their requests leave by hand-off after their first
token (`router/core/handoff.py`), and none is sent to them. Plain object over
`LoadReport`s and a `Clock`, like the routing policies.

Moves still in flight (planned in an earlier round, not yet in the reports) are counted as if
done: the source's load without the request, the target's with it. Else a round planned while a
move runs sees the same imbalance again and sends a second request after the first (a live
migration takes several rounds' worth of time on a slow link), overshooting the balance.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from shunter.clock import Clock, MonotonicClock
from shunter.router.routing import freeness
from shunter.router.routing.load import LoadReport, Migration, RequestLoad, imbalanced

MEASURES = ("freeness", "expected", "usage")


class Rebalancer:
    def __init__(
        self, clock: Clock | None = None, interval_s: float = 0.2, abs_threshold: int = 16,
        rel_threshold: float = 1.25, max_per_round: int = 4, size_threshold_blocks: int | None = None,
        measure: str = "freeness", pressure_blocks: float = 2.0,
    ) -> None:
        if measure not in MEASURES:
            raise ValueError(f"measure: must be one of {', '.join(MEASURES)}, got {measure!r}")
        if pressure_blocks <= 0:
            raise ValueError(f"pressure_blocks: must be above 0, got {pressure_blocks}")
        self.measure, self.by_usage = measure, measure == "usage"
        self.clock = clock or MonotonicClock()
        self.interval_s, self.max_per_round = interval_s, max_per_round
        self.abs_threshold, self.rel_threshold = abs_threshold, rel_threshold
        self.pressure_blocks = pressure_blocks
        self.size_threshold_blocks = size_threshold_blocks
        self._last = self.clock.now()

    def due(self) -> bool:
        """True once per interval; the caller then calls `plan`."""
        now = self.clock.now()
        if now - self._last < self.interval_s:
            return False
        self._last = now
        return True

    def plan(self, replicas: Sequence[LoadReport], in_flight: Mapping[str, tuple[str, str]] | None = None
             ) -> list[Migration]:
        """This round's moves. `replicas`: reports with their requests (those migrating too);
        `in_flight`: request id -> (source, target) of the moves not finished yet."""
        healthy = [r for r in replicas if r.healthy and not r.prefill_only]  # prefill replicas hand off instead
        if len(healthy) < 2:
            return []
        in_flight = in_flight or {}
        moving = [(q, *in_flight[q.request_id]) for r in healthy for q in r.requests if q.request_id in in_flight]
        moves = self._specialize(healthy, moving)
        moved = {m.request_id for m in moves} | set(in_flight)
        if self.measure == "freeness":
            return moves + self._free(healthy, moved, moving, moves)
        return moves + self._pair(healthy, moved, moving)[: max(0, self.max_per_round - len(moves))]

    def _free(self, healthy: list[LoadReport], moved: set[str], moving: list[tuple[RequestLoad, str, str]],
              planned: list[Migration]) -> list[Migration]:
        """`freeness.pair` over standings that count the moves in flight and those just planned."""
        standings = {r.replica_id: freeness.Standing.of(r) for r in healthy}
        held = {q.request_id: q.held_blocks for r in healthy for q in r.requests}
        pending = [(q.request_id, s, d) for q, s, d in moving] + [(m.request_id, m.source, m.target) for m in planned]
        for request_id, src, dst in pending:
            if src in standings and dst in standings:
                standings[src] = standings[src].without(held[request_id])
                standings[dst] = standings[dst].with_(held[request_id])
        specializing = self._specializing(healthy)

        def movable(q: RequestLoad, target: LoadReport) -> bool:
            return not (specializing and not target.large_cache and self._big(q))

        return freeness.pair(healthy, standings, moved, self.pressure_blocks, self.max_per_round - len(planned),
                             movable)

    def _specializing(self, healthy: list[LoadReport]) -> bool:
        return self.size_threshold_blocks is not None and any(r.large_cache for r in healthy)

    def _big(self, q: RequestLoad) -> bool:
        return self.size_threshold_blocks is not None and q.blocks > self.size_threshold_blocks

    def _load(self, r: LoadReport) -> int:
        return r.usage if self.by_usage else r.load

    def _weight(self, q: RequestLoad) -> int:
        return q.held_blocks if self.by_usage else q.blocks

    def _pair(self, healthy: list[LoadReport], moved: set[str], moving: list[tuple[RequestLoad, str, str]]
              ) -> list[Migration]:
        loads = {r.replica_id: self._load(r) for r in healthy}
        for q, src, dst in moving:
            if src in loads and dst in loads:
                loads[src] -= self._weight(q)
                loads[dst] += self._weight(q)
        source = max(healthy, key=lambda r: loads[r.replica_id])
        target = min(healthy, key=lambda r: loads[r.replica_id])
        high, low = loads[source.replica_id], loads[target.replica_id]
        moves: list[Migration] = []
        keep_big = self._specializing(healthy) and not target.large_cache
        candidates = sorted(
            (q for q in source.requests if q.decoding and q.request_id not in moved and not (keep_big and self._big(q))),
            key=lambda q: -self._weight(q),
        )
        for q in candidates:
            if len(moves) >= self.max_per_round or not imbalanced(high, low, self.abs_threshold, self.rel_threshold):
                break
            weight = self._weight(q)
            if 0 < weight < high - low:  # moving it narrows the gap (|gap - 2b| < gap)
                moves.append(Migration(q.request_id, source.replica_id, target.replica_id))
                high, low = high - weight, low + weight
        return moves

    def _specialize(self, healthy: list[LoadReport], moving: list[tuple[RequestLoad, str, str]]) -> list[Migration]:
        """Decoding requests past the threshold on small replicas, each to the large replica
        least loaded once the moves in flight and those planned before it are counted."""
        if not self._specializing(healthy):
            return []
        large_loads = {r.replica_id: r.load for r in healthy if r.large_cache}
        for q, _, dst in moving:
            if dst in large_loads:
                large_loads[dst] += q.blocks
        in_flight = {q.request_id for q, _, _ in moving}
        moves = []
        for replica in healthy:
            if replica.large_cache:
                continue
            for q in replica.requests:
                if q.decoding and self._big(q) and q.request_id not in in_flight and len(moves) < self.max_per_round:
                    target = min(large_loads, key=large_loads.__getitem__)
                    large_loads[target] += q.blocks
                    moves.append(Migration(q.request_id, replica.replica_id, target))
        return moves
