"""A replica's engine counts as totals that never go backwards, across the replica's restarts.

An engine reports its preemptions, swaps and prefix-cache lookups as counts since it started
(`EngineStats`). A restarted replica starts again from zero, so the router cannot show those
numbers as they are: a Prometheus counter that drops reads as a reset, and the router's page
outlives the replica. `EngineTotals` adds up what each report adds to the one before; a report
from a new life of the replica (another outbox `epoch`), or one whose count dropped, adds its
count whole. What a replica counted after its last report before it died is lost with it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shunter.replica.engine_protocol import EngineStats

# The cumulative fields of `EngineStats` the metrics show as counters.
ENGINE_COUNTS = ("num_preemptions", "num_swaps", "prefix_queries", "prefix_hits", "spec_draft_tokens",
                 "spec_accepted_tokens", "prefix_hits_cpu", "cpu_offload_bytes", "cpu_load_bytes", "cpu_evicted_blocks",
                 "cpu_load_timeouts")


@dataclass
class EngineTotals:
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENGINE_COUNTS, 0))
    _epoch: int | None = None
    _last: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENGINE_COUNTS, 0))

    def update(self, epoch: int, stats: EngineStats) -> None:
        """Add what this report counted since the previous one of the same life."""
        if epoch != self._epoch:
            self._epoch, self._last = epoch, dict.fromkeys(ENGINE_COUNTS, 0)
        for name in ENGINE_COUNTS:
            value, last = getattr(stats, name), self._last[name]
            self.totals[name] += value - last if value >= last else value
            self._last[name] = value
