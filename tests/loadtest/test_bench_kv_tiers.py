"""`bench kv-tiers` at toy size on SmolLM2: the return of an evicted prompt is a CPU-tier hit with
the tier on, the same tokens come out either way, and the report and plot are written."""
from __future__ import annotations

import json

import pytest

from shunter import cli

pytestmark = pytest.mark.slow


def test_a_returning_prompt_is_loaded_from_the_cpu_tier_and_timed_against_recompute(tmp_path, smollm2_folder):
    out = tmp_path / "kv_tiers.json"
    assert cli.main(["bench", "kv-tiers", "--lengths", "160", "--repeats", "1", "--cpu-kv-gib", "0.05",
                     "--out", str(out)]) == 0
    row = json.loads(out.read_text())["lengths"][0]
    assert row["outputs_differing"] == 0 and row["cpu_tier"]["prefix_hits_cpu"] >= 96  # the most of its 9 blocks
    assert row["hit_speedup"] == pytest.approx(row["median_s"]["recompute"] / row["median_s"]["hit"])
    assert out.with_suffix(".png").stat().st_size > 0
