"""The replicas' load reports, kept so that a routing decision does not read all of them.

A policy's scan (`RoutingPolicy.select`) reads every `LoadReport` for every request: linear in
the replicas, the frontend's cost at a thousand of them. `LoadIndex` keeps the healthy replicas
in a heap keyed by (load, position): the least loaded is the top, in O(log n) per change and
amortized O(log n) per decision, with ties broken by position as the scan breaks them (the
first of equals). A change pushes a new entry and makes the old one stale (a version per
replica); stale entries are dropped when they reach the top, and the heap is rebuilt when they
outnumber the live ones. The large-cache replicas have a heap of their own. The healthy list
(random, round robin, power of two) is rebuilt only when health changes.

Prefill-only replicas (P/D disaggregation) are a pool apart: `prefill`, a `LoadIndex` of their
own, so every policy decides over either pool unchanged (`routing/disaggregation.py` picks the
pool). The main index answers for the other replicas only: `report` of a prefill replica is
None there, so a prefix it holds does not draw a decode request to it.

The contract: whoever changes a report's load or health calls `update(report)` (the router
after a poll, a placement, a replica going down; `put` when it comes back with a new report),
as the router and the simulator do. `tests/router/test_load_index.py` runs every policy's scan
and its indexed decision side by side over thousands of changes and asserts the same choices.
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from shunter.errors import ReplicaUnavailable
from shunter.router.routing.load import LoadReport


def load_of(r: LoadReport) -> int:
    """`LoadReport.load`, spelled out (the property call costs a decision time)."""
    return r.kv_blocks_in_use + r.blocks_expected_growth + r.blocks_waiting + r.pending_blocks


class LoadIndex:
    def __init__(self, reports: Iterable[LoadReport], prefill_pool: bool = False) -> None:
        """`prefill_pool`: this is the prefill replicas' own index (it has none of its own)."""
        self._reports: dict[str, LoadReport] = {}
        self._order: dict[str, int] = {}
        self._version: dict[str, int] = {}
        self._health: dict[str, bool] = {}
        self._heap: list[tuple[int, int, int, str]] = []  # (load, position, version, replica id)
        self._large: list[tuple[int, int, int, str]] = []  # the same, large-cache replicas only
        self._healthy: list[LoadReport] | None = None
        self.prefill: LoadIndex | None = None if prefill_pool else LoadIndex((), prefill_pool=True)
        for report in reports:
            self.put(report)

    def put(self, report: LoadReport) -> None:
        """Add a replica's report, or replace it (a replica back with a fresh report); a report
        whose role changed (a replica's first info) moves to its pool."""
        rid = report.replica_id
        if self.prefill is not None:
            mine, other = (self.prefill, self) if report.prefill_only else (self, self.prefill)
            other._drop(rid)
            if mine is self.prefill:
                self.prefill.put(report)
                return
        self._order.setdefault(rid, len(self._order))
        self._reports[rid] = report
        self._healthy = None
        self.update(report)

    def update(self, report: LoadReport) -> None:
        """The report's load or health changed (it must be the one `put` holds for its replica)."""
        if report.prefill_only and self.prefill is not None:
            self.prefill.update(report)
            return
        rid = report.replica_id
        version = self._version[rid] = self._version.get(rid, 0) + 1
        if self._health.get(rid) != report.healthy:
            self._health[rid] = report.healthy
            self._healthy = None
        if report.healthy:
            entry = (load_of(report), self._order[rid], version, rid)
            heapq.heappush(self._heap, entry)
            if report.large_cache:
                heapq.heappush(self._large, entry)
        if len(self._heap) > 4 * len(self._reports) + 64:
            self._compact()

    def least(self, large_only: bool = False) -> LoadReport | None:
        """The healthy replica with the lowest load (the first of equals); None if there is none."""
        heap, version = (self._large if large_only else self._heap), self._version
        while heap:
            _, _, v, rid = heap[0]
            if v == version[rid]:
                return self._reports[rid]
            heapq.heappop(heap)
        return None

    def least_or_raise(self) -> LoadReport:
        least = self.least()
        if least is None:
            raise ReplicaUnavailable("no healthy replica")
        return least

    def healthy(self) -> list[LoadReport]:
        """The healthy reports in position order (raises when there is none)."""
        if self._healthy is None:
            self._healthy = [r for r in self._reports.values() if r.healthy]
        if not self._healthy:
            raise ReplicaUnavailable("no healthy replica")
        return self._healthy

    def report(self, replica_id: str) -> LoadReport | None:
        return self._reports.get(replica_id)

    def position(self, replica_id: str) -> int:
        return self._order[replica_id]

    def __iter__(self) -> Iterator[LoadReport]:
        return iter(self._reports.values())

    def __len__(self) -> int:
        return len(self._reports)

    def _drop(self, replica_id: str) -> None:
        """Forget a replica (its role moved it to the other pool); its heap entries go stale."""
        if self._reports.pop(replica_id, None) is not None:
            self._version[replica_id] += 1
            self._health.pop(replica_id, None)
            self._healthy = None

    def _compact(self) -> None:
        version = self._version
        for name in ("_heap", "_large"):
            live = [e for e in getattr(self, name) if e[2] == version[e[3]] and e[3] in self._reports]
            heapq.heapify(live)
            setattr(self, name, live)
