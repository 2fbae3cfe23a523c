"""1,000 replicas: how fast the router's policies decide, and whether routing and rebalancing keep
their quality at that size (experiments routing and rebalance, rerun at scale)."""
from __future__ import annotations

import time
from typing import Any

from shunter.loadtest.sim.experiments.common import Result, Scale, simulate
from shunter.loadtest.sim.experiments.rebalancing import rebalance
from shunter.loadtest.sim.experiments.routing import COST, RATE_PER_REPLICA, _config
from shunter.loadtest.workloads import shared_prefix


def scale(scale: Scale) -> Result:
    replicas, n = scale.r(1000), scale.n(100_000)
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    workload = shared_prefix(n, RATE_PER_REPLICA * replicas, seed=10, num_groups=8 * replicas)
    routed = {}
    for policy in ("least_load", "prefix_aware"):
        started = time.perf_counter()
        summary, _ = simulate(_config(replicas, policy), COST, workload, progress=f"{replicas} replicas, {policy}")
        timings[f"shared-prefix, {policy}"] = time.perf_counter() - started
        routed[policy] = summary
        rows.append({"run": f"shared-prefix, {policy}", "wall s": timings[f"shared-prefix, {policy}"],
                     "decisions/s": 1e6 / summary.extra["decision_us"],
                     "decisions/s with hashing": 1e6 / (summary.extra["decision_us"] + summary.extra["describe_us"]),
                     "hit rate": summary.prefix_hit_rate, "TTFT p90 s": summary.ttft_p90,
                     "TTFT p99 s": summary.ttft_p99, "e2e p99 s": summary.e2e_p99, "preemptions": summary.preemptions,
                     "migrations": summary.migrations, "output tokens": summary.output_tokens})
    started = time.perf_counter()
    moved = rebalance(scale, replicas=replicas, n=n, progress=f"{replicas} replicas, skewed, ")
    timings["skewed-output, rebalance off and on"] = time.perf_counter() - started
    for r in moved.rows:
        rows.append({"run": f"skewed-output, {r['rebalancing']}", "wall s": timings["skewed-output, rebalance off and on"] / 2,
                     "decisions/s": None, "decisions/s with hashing": None, "hit rate": None, "TTFT p90 s": None,
                     "TTFT p99 s": r["TTFT p99 s"], "e2e p99 s": r["e2e p99 s"], "preemptions": r["preemptions"],
                     "migrations": r["migrations"], "output tokens": None})
    ll, pa = routed["least_load"], routed["prefix_aware"]
    slowest = max(v for k, v in timings.items() if k.startswith("shared"))
    return Result(
        "scale", f"{replicas:,} replicas, {n:,} requests: decision rate, and routing and rebalancing at scale",
        anchor="issue 12's scale target: 1,000 replicas and 100,000 requests simulated in under 10 minutes on this "
               "2-core machine; the quality of experiments routing and rebalance should hold at that size",
        ours=f"one {replicas:,} x {n:,} run took {slowest / 60:.1f} min (slowest shared-prefix run); prefix-aware "
             f"decides {1e6 / pa.extra['decision_us']:,.0f}/s at {replicas:,} replicas; hit rate {pa.prefix_hit_rate:.0%} "
             f"against least load's {ll.prefix_hit_rate:.0%}; rebalancing: {moved.ours}",
        verdict=(f"The quality ordering of the small clusters holds at {replicas:,} replicas: {moved.verdict}"),
        columns=list(rows[0]), rows=rows,
        settings={"cost_model": COST, "routing workload": f"shared-prefix, {n} requests, {8 * replicas} groups, "
                                                          f"Poisson at {RATE_PER_REPLICA * replicas:g}/s",
                  "rebalance workload": moved.settings["workload"], "timings_s": timings},
    )
