"""The experiments of `shunter bench sim --experiment NAME`, by name (each a function of the scale).

Importing this package is light (the CLI lists names for `--help`); `registry()` imports the
experiments, which bring the engine and torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from shunter.loadtest.sim.experiments.common import Result, Scale

NAMES = ("static", "chunked", "slai", "routing", "hot-prefix", "rebalance", "specialization", "makespan", "scale",
         "slo-preemptions", "crosscheck", "gpu-crosscheck", "rad", "tiling", "cache-order", "speculative", "kv-tiers",
         "disaggregation")
SCALE_NAMES = ("full", "toy")


def registry() -> dict[str, Callable[[Scale], Result]]:
    from shunter.loadtest.sim.experiments import (
        batching,
        cache_order,
        crosscheck,
        disaggregation,
        gpu_crosscheck,
        kv_tiers,
        makespan,
        policies,
        rad,
        rebalancing,
        routing,
        scale,
        speculative,
    )

    experiments = {
        "static": batching.static,
        "chunked": batching.chunked,
        "slai": batching.slai,
        "routing": routing.routing,
        "hot-prefix": routing.hot_prefix,
        "rebalance": rebalancing.rebalance,
        "specialization": rebalancing.specialization,
        "makespan": makespan.makespan,
        "scale": scale.scale,
        "slo-preemptions": policies.slo_preemptions,
        "crosscheck": crosscheck.crosscheck,  # runs real SmolLM2 replicas: minutes, and Ray
        "gpu-crosscheck": gpu_crosscheck.gpu_crosscheck,  # replays the committed H100 run: seconds, no GPU
        "rad": rad.rad,
        "tiling": rad.tiling,
        "cache-order": cache_order.cache_order,
        "speculative": speculative.speculative,  # analytic: the H100 cost models, no simulation
        "kv-tiers": kv_tiers.kv_tiers,
        "disaggregation": disaggregation.disaggregation,
    }
    assert tuple(experiments) == NAMES
    return experiments
