"""router/routing/placement.py: what the router and the simulator share."""
from __future__ import annotations

import dataclasses

from shunter.replica.engine_protocol import EngineStats
from shunter.router.routing import LoadReport
from shunter.router.routing.placement import STAT_FIELDS, apply_stats


def test_apply_stats_copies_every_stat_field_and_clears_what_was_pending():
    names = [f.name for f in dataclasses.fields(EngineStats)]
    stats = EngineStats(**{name: 1000 + i for i, name in enumerate(names)})
    report = LoadReport("r0", pending_blocks=7)
    apply_stats(report, stats)
    for name in STAT_FIELDS:
        assert getattr(report, name) == getattr(stats, name), name
    assert report.pending_blocks == 0
    assert report.spec_acceptance_rate == stats.spec_accepted_tokens / stats.spec_draft_tokens
    assert (report.cpu_blocks_total, report.cpu_blocks_cached) == (stats.kv_cpu_blocks_total, stats.kv_cpu_blocks_cached)
    assert report.cpu_hit_rate == stats.prefix_hits_cpu / stats.prefix_queries
    derived = {"pending_blocks", "spec_acceptance_rate", "cpu_blocks_total", "cpu_blocks_cached", "cpu_hit_rate"}
    untouched = {f.name for f in dataclasses.fields(LoadReport)} - set(STAT_FIELDS) - derived
    assert all(getattr(report, n) == getattr(LoadReport("r0"), n) for n in untouched if n != "replica_id")
