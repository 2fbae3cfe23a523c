"""`shunter bench migration` at toy size: both modes at each context, the live ones staged, the
results written with their plot (the numbers themselves are the benchmark's, not the test's)."""
from __future__ import annotations

import json

from shunter.loadtest import bench_migration


def test_bench_migration_runs_both_modes_at_each_context(tmp_path):
    out = tmp_path / "migration.json"
    assert bench_migration.main(["--model", "random:tiny", "--contexts", "64", "256", "--samples", "1", "--others", "1",
                                 "--move-after", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["context"], r["mode"]) for r in result["rows"]] == [(64, "stop-and-copy"), (64, "live"),
                                                                   (256, "stop-and-copy"), (256, "live")]
    live = [s for s in result["samples"] if s["mode"] == "live"]
    copy = [s for s in result["samples"] if s["mode"] == "stop-and-copy"]
    assert all(s["stages"] >= 1 and s["blocks_staged"] >= s["context"] // 16 - 1 for s in live)
    assert all(s["stages"] == 0 and s["blocks_staged"] == 0 and s["blocks_at_commit"] >= s["context"] // 16 for s in copy)
    assert all(s["downtime_s"] > 0 and s["bytes_moved"] > 0 for s in result["samples"])
    assert out.with_suffix(".png").stat().st_size > 0
