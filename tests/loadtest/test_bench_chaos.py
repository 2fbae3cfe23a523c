"""`shunter bench chaos`: the verdict's arithmetic, and a short run on random:tiny with two kills."""
from __future__ import annotations

import json

import pytest

from shunter.loadtest import bench_chaos
from shunter.loadtest.bench_chaos import Outcome, verdict


def test_verdict_tells_lost_duplicated_and_mismatched_apart():
    ref = [[1, 2, 3]] * 5
    got = [Outcome([1, 2, 3], None, 0.1), Outcome([1, 2], None, 0.1), Outcome([1, 2, 3], "UNAVAILABLE: x", 0.1),
           Outcome([1, 2, 3, 3], None, 0.1), Outcome([1, 9, 3], None, 0.1)]
    assert verdict(got, ref) == {"lost": 2, "duplicated": 1, "mismatched": 1}


@pytest.mark.slow
def test_two_kills_under_load_lose_and_duplicate_nothing(ray_cluster, tmp_path):
    out = tmp_path / "chaos.json"
    code = bench_chaos.main(["--model", "random:tiny", "--requests", "12", "--max-tokens", "48", "--kills", "2",
                             "--kill-interval", "0.5", "--max-duration", "90", "--out", str(out)])
    result = json.loads(out.read_text())
    assert code == 0, result
    assert result["kills"] == 2 and result["failovers"] >= 2 and result["requests"] >= 12
    assert (result["lost"], result["duplicated"], result["mismatched"]) == (0, 0, 0)
    assert result["fault_free"]["p99_s"] > 0 and result["with_kills"]["p99_s"] > 0
