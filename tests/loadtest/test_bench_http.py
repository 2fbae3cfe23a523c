"""`bench_http` end to end at a tiny size: both doors measured, numbers that can only come from real streams."""
from __future__ import annotations

import json

from shunter.loadtest import bench_http


def test_bench_http_measures_both_doors(tmp_path):
    out = tmp_path / "bench_http.json"
    assert bench_http.main(["--requests", "4", "--rounds", "2", "--concurrency", "2", "--max-tokens", "6",
                            "--step-ms", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (level,) = result["levels"]
    for door in ("grpc", "http"):
        m = level[door]
        assert m["requests"] == 8 and m["chunks"] >= 8 and m["tokens_per_chunk"] >= 1
        assert m["gap_p50_ms"] >= 2.0  # a chunk a step at most
        assert 0 <= m["delivery_p50_ms"] <= m["path_ttft_p50_ms"] < m["ttft_p50_ms"]
        assert m["server_cpu_per_chunk_ms"] > 0
    assert len(level["path_ttft_p50_ms_per_round"]) == 2
    assert result["command"].startswith("shunter bench http")
