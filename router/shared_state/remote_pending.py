"""Load that other frontends placed on a replica and its reports do not show yet.

A frontend counts what it sent a replica since its last report (`LoadReport.pending_blocks`),
so a burst does not all land on the replica that looked emptiest. With several frontends each
also hears the others' placements on the bus and adds them to that count, until a report from
the replica is known to include them: each drain lists the requests the replica took since the
previous one, counted in the stats it carries (`PollResult.taken`). A placement heard after the
report that took it is recognised and not counted; one never taken (refused, or lost with its
frontend) stops counting after `hold_s`.
"""
from __future__ import annotations

import time
from collections import OrderedDict

from shunter.router.routing import LoadReport

HOLD_S = 5.0
KEEP_TAKEN = 4096  # request ids remembered per replica, to recognise placements heard late


class RemotePending:
    def __init__(self, hold_s: float = HOLD_S) -> None:
        self.hold_s = hold_s
        self._pending: dict[str, dict[str, tuple[int, float]]] = {}  # replica -> request -> (blocks, heard at)
        self._taken: dict[str, OrderedDict[str, None]] = {}  # replica -> recently taken requests
        self._counted: dict[str, int] = {}  # replica -> blocks of ours in its report's pending_blocks now

    def heard(self, report: LoadReport, request_id: str, blocks: int) -> None:
        """Another frontend placed `request_id` on this replica."""
        replica_id = report.replica_id
        if request_id in self._taken.get(replica_id, ()):
            return  # its report came first
        self._pending.setdefault(replica_id, {})[request_id] = (blocks, time.monotonic())
        report.pending_blocks += blocks
        self._counted[replica_id] = self._counted.get(replica_id, 0) + blocks

    def reported(self, report: LoadReport, taken: list[str], fresh: bool) -> None:
        """A drain of this replica arrived: `taken` are counted in its stats now; `fresh`: the
        stats were applied (which zeroed `pending_blocks`)."""
        replica_id, now = report.replica_id, time.monotonic()
        pending = self._pending.get(replica_id, {})
        if taken:
            seen = self._taken.setdefault(replica_id, OrderedDict())
            for request_id in taken:
                pending.pop(request_id, None)
                seen[request_id] = None
            while len(seen) > KEEP_TAKEN:
                seen.popitem(last=False)
        for request_id in [r for r, (_, heard) in pending.items() if now - heard > self.hold_s]:
            del pending[request_id]
        total = sum(blocks for blocks, _ in pending.values())
        report.pending_blocks += total - (0 if fresh else self._counted.get(replica_id, 0))
        self._counted[replica_id] = total
