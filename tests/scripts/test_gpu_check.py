"""scripts/gpu-check.sh proven on the CPU before any GPU run depends on it: its smoke mode runs
every step at toy sizes and writes the summary; its no-install fallback imports the package."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_passes_every_step_and_summarizes(tmp_path):
    env = {**os.environ, "GPU_CHECK_SMOKE": "1", "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    log = (tmp_path / "gpu-check.log").read_text()
    assert proc.returncode == 0, proc.stdout[-2000:] + log[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["env", "install", "pytest-gpu", "bench-kernels",
                                                     "bench-staircase", "bench-step", "bench-engine",
                                                     "bench-migration", "bench-kv-tiers"]
    assert all(s["status"] == "ok" for s in summary["steps"]), summary["steps"]
    assert summary["env"]["torch"] and summary["pytest_gpu"]["skipped"] > 0 and not summary["pytest_gpu"]["failed"]
    kernels = summary["bench_kernels"]["by_num_seqs"]
    assert set(kernels) == {"1", "2"} and all(row["sdpa_backend"] for row in kernels.values())
    [case] = summary["bench_step"]["cases"]
    assert case["seqs"] == 4 and all(case[p] > 0 for p in ("before", "persistent", "after"))
    assert {(r["context"], r["mode"]) for r in summary["bench_migration"]["rows"]} == {(64, "stop-and-copy"), (64, "live")}
    assert "## Migration downtime" in (tmp_path / "summary.md").read_text()
    [tier] = summary["bench_kv_tiers"]["rows"]
    assert tier["length"] == 64 and tier["outputs_differing"] == 0 and tier["hit_s"] > 0
    assert "## CPU tier of the prefix cache" in (tmp_path / "summary.md").read_text()
    assert summary["bench_engine"]["tokens_per_s"]["shunter"] > 0
    assert summary["bench_staircase"]["timing_s"] > 0 and summary["bench_staircase"]["aligned_gain"] >= 1.0
    assert summary["bench_engine"]["kernel_variants_compiled_in_timed_run"] == 0
    assert "| bench-engine | ok" in (tmp_path / "summary.md").read_text()
    _bench_engine_json_is_whole(json.loads((tmp_path / "bench_engine.json").read_text()))
    _bench_kernels_json_is_whole(json.loads((tmp_path / "bench_kernels.json").read_text()))


def _bench_engine_json_is_whole(result):
    """`bench engine` at toy size, as the smoke runs it (its only end-to-end run in the suite)."""
    assert result["hf_static_requests"] == 4 and result["hf_continuous_requests"] == 8
    per_step = result["measured"]["per_step"]
    assert per_step["steps"] == result["measured"]["steps"]
    assert per_step["step_ms"] > per_step["launch_ms"] > 0 and per_step["prepare_ms"] > 0
    assert per_step["step_ms"] > per_step["prepare_ms"] + per_step["launch_ms"] + per_step["outputs_ms"]
    assert per_step["decode_graph_steps"] == 0  # no CUDA graphs on the CPU
    assert per_step["syncs_per_step"] <= 1 and per_step["implicit_syncs"] == 0
    assert "device_idle_share" not in per_step  # the device's timeline is CUDA's alone
    rates = result["output_tokens_per_s"]
    assert all(rates[k] > 0 for k in ("shunter", "roofline", "hf_static", "hf_continuous"))
    assert rates["shunter"] < rates["roofline"]  # nothing beats the bound of its own schedule
    assert result["measured"]["steps"] > 0 and result["workload"]["useful_output_tokens"] > 0
    assert result["hf_continuous_budget"]["max_batch_tokens"] == result["shunter_budget"]["max_num_batched_tokens"]
    assert result["measured"]["kernel_variants_compiled_in_timed_run"] == 0


def _bench_kernels_json_is_whole(result):
    """`bench kernels` in Triton's interpreter, as the smoke runs it (its only end-to-end run)."""
    assert [p["num_seqs"] for p in result["points"]] == [1, 2]
    for point in result["points"]:
        assert point["triton_gbs"] > 0 and point["graph_table_gbs"] > 0 and point["sdpa_padded_gbs"] > 0
        assert point["max_abs_diff_vs_sdpa"] < 0.05 and point["timing"] == "wall"
        assert point["graph_table_splits"] >= point["num_splits"]


def test_fallback_imports_the_package_from_the_checkout_without_an_install(tmp_path):
    """`python -S` skips site-packages, so the editable install is invisible: only the checkout on
    the path (what gpu-check.sh's fallback sets) and `shunter.source_layout`'s finder work."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import shunter.replica.engine_config, "
            "shunter.loadtest.gpu_check_summary; print(shunter.replica.engine_config.__file__)")
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(ROOT / "replica" / "engine_config.py")
