"""Each `shunter bench sim` experiment at toy scale (seconds), and the report it writes."""
from __future__ import annotations

import json

import pytest

from shunter.loadtest.bench_sim import main
from shunter.loadtest.sim import report
from shunter.loadtest.sim.experiments import NAMES, registry
from shunter.loadtest.sim.experiments.common import SCALES, Result
from shunter.loadtest.sim.experiments.makespan import greedy_makespan, lower_bound

TOY = SCALES["toy"]
HEAVY = {"scale", "slai", "routing", "crosscheck", "gpu-crosscheck", "rad"}  # several clusters, or a real model: tested apart or not here


@pytest.mark.parametrize("name", [n for n in NAMES if n not in HEAVY])
def test_experiment_runs_at_toy_scale(name):
    result = registry()[name](TOY)
    assert isinstance(result, Result) and result.rows and result.anchor and result.ours and result.verdict
    assert all(set(result.columns) <= set(row) for row in result.rows)


def test_routing_toy_compares_all_five_policies_at_two_sizes():
    result = registry()["routing"](TOY)
    assert {r["policy"] for r in result.rows} == {"random", "round_robin", "least_load", "power_of_two", "prefix_aware"}
    assert len({r["replicas"] for r in result.rows}) == 2
    by = {(r["replicas"], r["policy"]): r for r in result.rows}
    # 16-20 requests over 8 groups per replica: a hit at toy scale is a coincidence of two requests of one group
    # close in time (at 8 replicas there may be none), so prefix-aware must not lose anywhere and win somewhere.
    gains = [by[(n, "prefix_aware")]["hit rate"] - by[(n, "random")]["hit rate"] for n in {n for n, _ in by}]
    assert min(gains) >= 0 and max(gains) > 0


def test_greedy_least_load_is_within_grahams_bound_and_the_bound_is_tight_where_known():
    assert greedy_makespan([3, 3, 2, 2, 2], 2) == 7  # arrival order: 3|3, 2|2, then 2 on either: 7
    assert lower_bound([3, 3, 2, 2, 2], 2) == 6
    assert lower_bound([5, 5, 5], 2) == 10  # two of the three largest share a replica
    assert greedy_makespan([1] * 8, 4) == 2


def test_bench_sim_writes_json_png_and_its_own_section_of_the_results_page(tmp_path, monkeypatch):
    md = tmp_path / "results.md"
    md.write_text("# Results\n\nSomeone else's section.\n")
    monkeypatch.setattr(report, "RESULTS_MD", md)
    assert main(["--experiment", "makespan", "--scale", "toy", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "makespan.json").read_text())
    assert data["command"] == "shunter bench sim --experiment makespan --scale toy --out-dir " + str(tmp_path)
    assert (tmp_path / "makespan.png").stat().st_size > 1000
    first = md.read_text()
    assert "Someone else's section." in first and first.count("<!-- sim:makespan -->") == 1
    assert "| job sizes | replicas |" in first and "makespan.png" in first
    main(["--experiment", "makespan", "--scale", "toy", "--out-dir", str(tmp_path)])
    again = md.read_text()
    assert again.count("<!-- sim:makespan -->") == 1 and again.count("<!-- sim:intro -->") == 1
    assert "Someone else's section." in again


def test_crosscheck_plot_draws_every_run(tmp_path):
    """The cross-check itself runs real SmolLM2 replicas (minutes): its plot is checked apart."""
    from shunter.loadtest.sim.experiments.crosscheck import _plot

    keys = ("TTFT mean s", "TTFT p90 s", "throughput tok/s")
    rows = [{"run": name, **{k: 1.0 for k in keys}} for name in ("a", "b", "error, x", "c", "d", "error, y", "e")]
    _plot(tmp_path / "x.png", rows)
    assert (tmp_path / "x.png").stat().st_size > 1000


def test_gpu_crosscheck_replays_the_h100_run_step_for_step_and_the_committed_overhead_closes_the_gap():
    """The replay must run the real run's schedule (its step count, and its roofline at the run's
    measured peaks, which the bench computed from the steps it recorded); the committed host
    overhead is the one the experiment computes from that run."""
    from shunter.loadtest.sim.experiments.gpu_crosscheck import (
        COST,
        MeasuredRun,
        host_overhead_s,
        kernel_seconds,
        load_cost_model,
        measured_roofline_seconds,
        replay,
    )

    run, cost = MeasuredRun.load(), load_cost_model(COST)
    r = replay(run, cost)
    assert r.steps == len(r.shapes) == run.steps
    assert measured_roofline_seconds(cost.step, r.shapes, run.peak_flops, run.bandwidth) == pytest.approx(
        run.roofline_s, rel=1e-9)
    assert host_overhead_s(run, kernel_seconds(cost.step, r.shapes)) == pytest.approx(cost.step.overhead_s, abs=1e-7)
    assert r.seconds == pytest.approx(run.seconds, rel=1e-4)
    result = registry()["gpu-crosscheck"](TOY)
    assert not result.notes  # the committed constant is the one computed now
    for name in ("h100_llama-3-8b", "h100_mistral-7b"):  # the other H100 models carry the same constant
        assert load_cost_model(name).step.overhead_s == cost.step.overhead_s


def test_scale_times_every_run_and_reports_decision_rates(tmp_path):
    """Experiment scale on 4 replicas and 40 requests (its toy scale is 125 x 2,000: tens of seconds)."""
    from shunter.loadtest.sim.experiments.common import Scale

    result = registry()["scale"](Scale("tiny", lambda n: 40, lambda r: 4))
    runs = [r["run"] for r in result.rows]
    assert runs == ["shared-prefix, least_load", "shared-prefix, prefix_aware", "skewed-output, rebalancing none",
                    "skewed-output, rebalancing freeness, live"]
    assert all(r["wall s"] > 0 and r["cpu s"] > 0 for r in result.rows)
    assert all(r["decisions/s"] > 0 for r in result.rows[:2])
    assert "Scale target met" in result.verdict and "4 x 40" in result.ours
    result.plot(tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 0


def test_rebalance_compares_none_the_policy_before_and_freeness_stop_and_copy_and_live_at_each_rate(tmp_path):
    from shunter.loadtest.sim.experiments.common import Scale
    from shunter.loadtest.sim.experiments.rebalancing import ORACLE, RATES, RUNS

    result = registry()["rebalance"](Scale("tiny", lambda n: 30, lambda r: 2))
    expected = [(r, label) for r in RATES for label in RUNS]
    expected.insert(1, (RATES[0], ORACLE))
    assert [(row["rate/replica"], row["rebalancing"]) for row in result.rows] == expected
    assert all(row["migrations"] == 0 for row in result.rows if row["rebalancing"] in ("none", ORACLE))
    assert "Issue 23's goal" in result.verdict and result.ours.count("freeness, live") == len(RATES)
    result.plot(tmp_path / "rebalance.png")
    assert (tmp_path / "rebalance.png").stat().st_size > 1000


def test_speculation_pays_most_at_batch_1_and_less_as_the_batch_grows():
    from shunter.loadtest.sim.experiments.speculative import tokens_per_step

    assert tokens_per_step(0.0, 4) == 1.0 and tokens_per_step(1.0, 4) == 5.0
    rows = {(r["proposer"], r["acceptance"]): r for r in registry()["speculative"](TOY).rows}
    draft, as_steps = rows[("draft 1B, one launch", 0.8)], rows[("draft 1B, k engine steps", 0.8)]
    assert draft["B=1"] > 1.5 > draft["B=512"] and draft["B=1"] >= draft["B=64"] >= draft["B=512"]
    assert as_steps["B=1"] < draft["B=1"]  # each engine step pays the host overhead again
    assert all(rows[("n-gram", a)]["B=1"] > rows[("draft 1B, one launch", a)]["B=1"] for a in (0.6, 0.8))
