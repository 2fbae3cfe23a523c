"""Cross-check: the simulator against a real run of the same trace.

The real run is two SmolLM2 replicas on this CPU (Ray actors, one torch thread each, as the CPU
cost model was measured) behind the real `Router` in this process, fed the trace at its arrival
times; the simulated run is the same trace through `SimCluster` with the fitted CPU cost model
and the same engine settings. Both count TTFT from a request's arrival to its first token and
throughput as output tokens over first arrival to last token. The errors are the result.
"""
from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from shunter.loadtest.sim.cluster import ClusterConfig
from shunter.loadtest.sim.costs import load_cost_model
from shunter.loadtest.sim.experiments.common import Result, Scale, simulate
from shunter.loadtest.workloads import WorkloadRequest, sharegpt
from shunter.replica.engine_config import EngineConfig

COST = "smollm2_cpu"
MODEL = "smollm2-135m-instruct"
ROUTING = "least_load"
MAX_PROMPT, MAX_OUTPUT = 384, 64  # ShareGPT lengths, capped so the CPU run takes a minute or two


def engine_config() -> EngineConfig:
    """The settings the CPU cost model was fitted under (fit_costs.py's defaults)."""
    return EngineConfig(model=MODEL, device="cpu", num_kv_blocks=512, max_num_batched_tokens=512, max_num_seqs=36,
                        preemption_mode="auto", swap_space=0.05, seed=0)


def trace(n: int, rate: float) -> list[WorkloadRequest]:
    return [dataclasses.replace(r, prompt_len=min(r.prompt_len, MAX_PROMPT), output_len=min(r.output_len, MAX_OUTPUT))
            for r in sharegpt(n, rate, seed=11)]


@dataclasses.dataclass
class Measured:
    ttft: list[float]
    output_tokens: int
    duration_s: float

    def row(self, label: str) -> dict[str, Any]:
        return {"run": label, "TTFT mean s": statistics.mean(self.ttft), "TTFT p90 s": float(np.percentile(self.ttft, 90)),
                "throughput tok/s": self.output_tokens / self.duration_s, "requests": len(self.ttft)}


async def _real(workload: list[WorkloadRequest]) -> Measured:
    import ray

    from shunter.router.replica_actor import RayReplicaClient, spawn
    from shunter.router.router import Router, RouterConfig

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        clients = [RayReplicaClient(f"x{i}", spawn(f"x{i}", engine_config(), num_cpus=1)) for i in range(2)]
        router = Router(clients, RouterConfig(routing=ROUTING, rebalance=False))
        await router.start()
        vocab = router.info.limits.vocab_size
        warm = [WorkloadRequest(f"warm{i}", 0.0, 32, 4, seed=100 + i) for i in range(2)]
        await asyncio.gather(*(_one(router, w, vocab, 0.0, {}) for w in warm))  # one per replica (least load)
        loop = asyncio.get_running_loop()
        start, stamps = loop.time(), {}
        await asyncio.gather(*(_one(router, r, vocab, start, stamps) for r in workload))
        await router.stop()
    finally:
        ray.shutdown()
    ttft = [stamps[r.request_id][0] - r.arrival_s for r in workload]
    end = max(s[1] for s in stamps.values())
    return Measured(ttft, sum(s[2] for s in stamps.values()), end - min(r.arrival_s for r in workload))


async def _one(router: Any, r: WorkloadRequest, vocab: int, start: float, stamps: dict) -> None:
    """Send `r` at its arrival; stamp (first token, last token, tokens), in seconds since `start`."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start + r.arrival_s - loop.time()))
    first, tokens = None, 0
    async for delta in router.generate(r.request_id, r.prompt_tokens(vocab), r.sampling_params()):
        if delta.token_ids and first is None:
            first = loop.time() - start
        tokens += len(delta.token_ids)
    stamps[r.request_id] = (first, loop.time() - start, tokens)


def crosscheck(scale: Scale) -> Result:
    n, rate = (40, 1.0) if scale.name == "full" else (4, 2.0)
    workload = trace(n, rate)
    cost = load_cost_model(COST)
    config = ClusterConfig(2, dataclasses.replace(engine_config(), model="sim"), routing=ROUTING)
    summary, cluster = simulate(config, cost, workload)
    simulated = Measured([r.ttft for r in cluster.records.values()], summary.output_tokens, summary.duration_s)
    started = time.perf_counter()
    real = asyncio.run(_real(workload))
    real_s = time.perf_counter() - started
    rows = [real.row("real: 2 SmolLM2 CPU replicas (Ray)"), simulated.row(f"simulated ({COST})")]
    errors = {k: (rows[1][k] - rows[0][k]) / rows[0][k] * 100 for k in ("TTFT mean s", "TTFT p90 s", "throughput tok/s")}
    rows.append({"run": "error, %", **errors, "requests": None})
    worst = max(abs(e) for e in errors.values())
    fit = cost.raw.get("fit", {})
    return Result(
        "crosscheck", "Cross-check: the simulator against a real run of the same trace (2 SmolLM2 replicas, CPU)",
        anchor="goal: within 5% (Vidur reports under 9%, llm-d's BLIS 7-9%); above 10% is a finding to fix",
        ours=f"errors: mean TTFT {errors['TTFT mean s']:+.1f}%, P90 TTFT {errors['TTFT p90 s']:+.1f}%, throughput "
             f"{errors['throughput tok/s']:+.1f}%",
        verdict=("Within the 5% goal." if worst <= 5 else "Within 10%, short of the 5% goal." if worst <= 10 else
                 "Above 10%: a finding (see notes)."),
        columns=list(rows[0]), rows=rows,
        settings={"trace": f"ShareGPT lengths capped at {MAX_PROMPT} prompt / {MAX_OUTPUT} output tokens, {n} requests, "
                           f"Poisson at {rate}/s", "routing": ROUTING,
                  "engine": "num_kv_blocks 512, budget 512, 36 seats, auto preemption (the fit's settings)",
                  "cost_model_fit": f"held-out mean error {fit.get('held_out_mean_abs_rel_error', float('nan')):.1%} per step",
                  "real_run_wall_s": round(real_s, 1)},
        notes=["The machine is shared with other work: the real run's step times include whatever else ran, which "
               "the fitted model (the fastest of repeated measurements) does not."],
        plot=lambda p: _plot(p, rows[:2]),
    )


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["TTFT mean s", "TTFT p90 s", "throughput tok/s"]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    for ax, key in zip(axes, keys):
        ax.bar(["real", "simulated"], [r[key] for r in rows], color=["#4c72b0", "#dd8452"])
        ax.set_title(key, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
