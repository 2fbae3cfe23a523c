"""Freeness: the rebalancer's default measure and its pairing (after Llumnix's virtual usage).

A replica's freeness is the KV blocks it has free once its queue is counted in, per request that
grows into them: (blocks total - in use - wanted by its queue - just sent to it) / (its running
requests, plus one when something waits). Every running request takes a new block each
`block_size` tokens, so freeness says how long the replica runs before it must preempt; below
zero, its queue alone wants more than it has free. The numbers a report's `usage` compares say
nothing of that: 900 blocks held by 30 requests are a preemption about to happen, by 3 they are
not.

A replica is under pressure when its freeness is below `pressure_blocks`: it is about to preempt,
or its queue cannot start. Each round pairs the replicas under pressure, the most pressed first,
with the freest, the i-th with the i-th (several pairs a round, not one), and moves from each
source the cheapest request that relieves it (the fewest blocks that lift it out of pressure),
else the largest, whose blocks relieve it most (a live migration's downtime does not grow with
them), then looks again, while the target stays out of pressure and freer than the source is
after the move. A replica with free blocks thus takes requests from one about to preempt, before
it does: migration instead of preemption.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shunter.router.routing.load import LoadReport, Migration, RequestLoad


@dataclass
class Standing:
    """One replica's freeness as a round plans it: the moves in flight and planned counted."""

    replica_id: str
    free: int  # blocks free once what waits for it is counted in (below zero: its queue wants more)
    growing: int  # requests that take new blocks: running, plus one for its queue

    @classmethod
    def of(cls, r: LoadReport) -> Standing:
        wanted = r.blocks_waiting + r.pending_blocks
        return cls(r.replica_id, r.kv_blocks_total - r.kv_blocks_in_use - wanted, r.num_running + (wanted > 0))

    @property
    def freeness(self) -> float:
        return self.free / max(self.growing, 1)

    def without(self, blocks: int) -> Standing:
        return Standing(self.replica_id, self.free + blocks, max(self.growing - 1, 0))

    def with_(self, blocks: int) -> Standing:
        return Standing(self.replica_id, self.free - blocks, self.growing + 1)


def pair(reports: list[LoadReport], standings: dict[str, Standing], skip: set[str], pressure: float, limit: int,
         movable: Callable[[RequestLoad, LoadReport], bool]) -> list[Migration]:
    """Up to `limit` moves from the replicas under pressure to the freest (module docstring).
    `standings` is updated with them; `skip`: requests not to move; `movable(request, target)`:
    whether a request may go to that replica at all (cache-size specialization)."""
    by_id = {r.replica_id: r for r in reports}
    sources = sorted((s for s in standings.values() if s.freeness < pressure), key=lambda s: s.freeness)
    pressed = {s.replica_id for s in sources}
    targets = sorted((s for s in standings.values() if s.replica_id not in pressed), key=lambda s: -s.freeness)
    moves: list[Migration] = []
    for src, dst in zip(sources, targets):
        source, target = by_id[src.replica_id], by_id[dst.replica_id]
        candidates = [q for q in source.requests
                      if q.decoding and q.held_blocks > 0 and q.request_id not in skip and movable(q, target)]
        while len(moves) < limit and standings[src.replica_id].freeness < pressure:
            q = _choose(candidates, standings[src.replica_id], standings[dst.replica_id], pressure)
            if q is None:
                break
            candidates.remove(q)
            standings[src.replica_id] = standings[src.replica_id].without(q.held_blocks)
            standings[dst.replica_id] = standings[dst.replica_id].with_(q.held_blocks)
            moves.append(Migration(q.request_id, src.replica_id, dst.replica_id))
    return moves


def _choose(candidates: Iterable[RequestLoad], src: Standing, dst: Standing, pressure: float) -> RequestLoad | None:
    """The fewest blocks that lift `src` out of pressure, else the most; only a move that leaves
    `dst` out of pressure and at least as free as `src`."""
    fits = [q for q in candidates if _fits(src.without(q.held_blocks), dst.with_(q.held_blocks), pressure)]
    relieving = [q for q in fits if src.without(q.held_blocks).freeness >= pressure]
    if relieving:
        return min(relieving, key=lambda q: q.held_blocks)
    return max(fits, key=lambda q: q.held_blocks, default=None)


def _fits(src_after: Standing, dst_after: Standing, pressure: float) -> bool:
    return dst_after.freeness >= pressure and dst_after.freeness >= src_after.freeness
