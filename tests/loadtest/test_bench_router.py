"""The router benchmarks run end to end with tiny settings, so they cannot rot."""
from __future__ import annotations

import json

import pytest

from shunter.loadtest import bench_hop, bench_routing
from shunter.router.routing import REGISTRY


def test_bench_hop_in_process(tmp_path, capsys):
    out = tmp_path / "hop.json"
    assert bench_hop.main(["--requests", "5", "--repeat", "2", "--metrics", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["mode"] == "in-process" and result["metrics"] and len(result["rounds"]) == 2
    assert result["command"].startswith("shunter bench hop --requests 5")
    assert 0 < result["rounds"][0]["client_ttft_p50_ms"] < 1000
    assert result["rounds"][0]["engine_ttft_p50_ms"] is not None
    assert "hop p50" in capsys.readouterr().out


def test_bench_routing_tiny(tmp_path, capsys):
    out = tmp_path / "routing.json"
    assert bench_routing.main(["--replicas", "4", "16", "--decisions", "200", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["policies"]) == set(REGISTRY)  # every routing policy, the random baseline too
    for ways in result["policies"].values():  # scan and index side by side, at each size
        assert set(ways) == {"scan", "index"}
        assert all(set(row) == {"4", "16"} and all(v > 0 for v in row.values()) for row in ways.values())
    assert "prefix_aware" in capsys.readouterr().out and out.with_suffix(".png").exists()


@pytest.mark.slow
def test_bench_hop_over_ray(tmp_path, ray_cluster):
    out = tmp_path / "hop_ray.json"
    assert bench_hop.main(["--ray", "--requests", "5", "--repeat", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["mode"] == "ray" and 0 < result["hop_p50_ms"] < 1000


def test_bench_hop_compares_redis_state_with_memory(tmp_path, capsys, redis_db):
    out = tmp_path / "hop_redis.json"
    assert bench_hop.main(["--requests", "5", "--repeat", "2", "--state", redis_db.address, "--out", str(out)]) == 0
    state = json.loads(out.read_text())["state"]
    assert len(state["redis_rounds"]) == 2 and 0 < state["redis"]["client_ttft_p50_ms"] < 1000
    assert state["added_p50_ms"] == state["redis"]["client_ttft_p50_ms"] - state["memory"]["client_ttft_p50_ms"]
    assert redis_db.password not in state["url"] + json.loads(out.read_text())["command"]
    assert "Redis state adds: p50" in capsys.readouterr().out
