"""The router's counters (`Counters`): what it routed, moved, failed over and refused, and why."""
from __future__ import annotations

from dataclasses import dataclass, field

# Why a request was refused without generating (`Counters.rejected_by`), and the gRPC status it got.
REJECT_REASONS = {
    "invalid": "INVALID_ARGUMENT",  # the frontend's or the replica's checks
    "max_in_flight": "RESOURCE_EXHAUSTED",  # over max_in_flight with the admission queue full
    "draining": "UNAVAILABLE",
    "replica_refused": "UNAVAILABLE",  # the replica's engine would not take it, for another reason
    "no_replica": "UNAVAILABLE",  # no healthy replica to place it on
}


@dataclass
class Counters:
    routed: int = 0  # placements on a replica (a failed-over request counts again)
    routed_to: dict[str, int] = field(default_factory=dict)  # routed, per replica
    migrated: int = 0
    migrated_recomputed: int = 0  # of migrated: the KV did not come (or fit), the target recomputed
    failed_over: int = 0
    handed_off: int = 0  # P/D: requests moved from a prefill replica to a decode replica after their first token
    rejected: int = 0  # refused without generating (the reasons: `REJECT_REASONS`)
    rejected_by: dict[str, int] = field(default_factory=dict)  # rejected, per reason (`REJECT_REASONS`)
    rejoined: int = 0
    migrations_refused_by: dict[str, int] = field(default_factory=dict)  # not started, request untouched (`REFUSALS`)
    migrations_aborted_by: dict[str, int] = field(default_factory=dict)  # stopped before the commit (`ABORTS`)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.rejected_by[reason] = self.rejected_by.get(reason, 0) + 1

    def refuse_migration(self, reason: str) -> None:
        self.migrations_refused_by[reason] = self.migrations_refused_by.get(reason, 0) + 1

    def abort_migration(self, reason: str) -> None:
        self.migrations_aborted_by[reason] = self.migrations_aborted_by.get(reason, 0) + 1
