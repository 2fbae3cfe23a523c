"""`bench step` end to end at a toy size: every path measured in one run, the split adds up."""
from __future__ import annotations

import json

import pytest

from shunter.loadtest import bench_step


def test_bench_step_measures_every_path_in_one_run(tmp_path):
    out = tmp_path / "step.json"
    assert bench_step.main(["--seqs", "4", "--contexts", "16", "--steps", "5", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    [case] = result["cases"]
    assert (case["seqs"], case["context"]) == (4, 16)
    for path in bench_step.PATHS:
        m = case[path]
        parts = sum(m[f"{k}_ms"] for k in (*bench_step.PARTS, "rest"))
        assert m["total_ms"] > 0 and m["schedule_ms"] > 0 and m["prepare_ms"] > 0 and m["outputs_ms"] > 0
        assert abs(parts - m["instrumented_ms"]) < 1e-6
        assert 0 < m["min_ms"] <= m["median_ms"]  # 5 blocks of one step (10 asked, 5 steps)
    assert case["before_over_after"] == case["before"]["total_ms"] / case["after"]["total_ms"]
    assert result["command"].startswith("shunter bench step")


def test_bench_step_refuses_no_blocks(capsys):
    with pytest.raises(SystemExit) as stop:
        bench_step.main(["--blocks", "0"])
    assert stop.value.code == 2 and "--blocks" in capsys.readouterr().err
