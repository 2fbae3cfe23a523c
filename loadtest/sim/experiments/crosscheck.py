"""Cross-check: the simulator against a real run of the same trace.

Two real runs, each against its simulation: two SmolLM2 replicas on this CPU as Ray actors (one
torch thread each, as the CPU cost model was measured) behind the real `Router`, fed the trace
at its arrival times; and one replica in this process at half the rate, whose steps are timed
with their shapes, so the cost model's error on the real run's own steps is known. The simulated
runs are the same traces through `SimCluster` with the fitted CPU cost model and the same engine
settings. Both count TTFT from a request's arrival to its first token and throughput as output
tokens over first arrival to last token. The errors are the result.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from shunter.loadtest.sim.cluster import ClusterConfig
from shunter.loadtest.sim.costs import CostModel, ScaledCost, StepShape, load_cost_model, mean_abs_rel_error
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
                "throughput tok/s": self.output_tokens / self.duration_s}


def _measured(workload: list[WorkloadRequest], stamps: dict[str, tuple[float, float, int]]) -> Measured:
    ttft = [stamps[r.request_id][0] - r.arrival_s for r in workload]
    end = max(s[1] for s in stamps.values())
    return Measured(ttft, sum(s[2] for s in stamps.values()), end - min(r.arrival_s for r in workload))


async def _drive(clients: list[Any], workload: list[WorkloadRequest]) -> dict[str, tuple[float, float, int]]:
    """The real Router over `clients`: one warm-up request per replica, then the trace on time."""
    from shunter.router.router import Router, RouterConfig

    router = Router(clients, RouterConfig(routing=ROUTING, rebalance=False))
    await router.start()
    vocab = router.info.limits.vocab_size
    warm = [WorkloadRequest(f"warm{i}", 0.0, 32, 4, seed=100 + i) for i in range(len(clients))]
    await asyncio.gather(*(_one(router, w, vocab, 0.0, {}) for w in warm))  # one per replica (least load)
    start, stamps = asyncio.get_running_loop().time(), {}
    await asyncio.gather(*(_one(router, r, vocab, start, stamps) for r in workload))
    await router.stop()
    return stamps


async def _real_ray(workload: list[WorkloadRequest], replicas: int) -> Measured:
    """Replicas as Ray actors (a process and a CPU each, one torch thread), as `shunter serve` runs them."""
    import ray

    from shunter.router.replica_actor import RayReplicaClient, spawn

    ray.init(num_cpus=replicas, include_dashboard=False, logging_level="ERROR")
    try:
        clients = [RayReplicaClient(f"x{i}", spawn(f"x{i}", engine_config(), num_cpus=1)) for i in range(replicas)]
        return _measured(workload, await _drive(clients, workload))
    finally:
        ray.shutdown()


def _real_local(workload: list[WorkloadRequest]) -> tuple[Measured, list[tuple[StepShape, float]]]:
    """One replica in this process, its steps timed with their shapes (what the model prices)."""
    import torch

    from shunter.replica.engine import Engine
    from shunter.router.replica_client import LocalReplicaClient

    torch.set_num_threads(1)
    engine = Engine(engine_config())
    steps: list[tuple[StepShape, float]] = []
    shape: list[StepShape] = []
    execute, step = engine.runner.execute, engine.step

    def recording(out):
        shape.append(StepShape.of(out, engine.block_size))
        return execute(out)

    def timed():
        started = time.perf_counter()
        outputs = step()
        if shape:
            steps.append((shape.pop(), time.perf_counter() - started))
        return outputs

    engine.runner.execute, engine.step = recording, timed
    client = LocalReplicaClient("local0", lambda: engine)
    try:
        stamps = asyncio.run(_drive([client], workload))
    finally:
        client.kill()
    return _measured(workload, stamps), steps


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


def _simulated(workload: list[WorkloadRequest], replicas: int, cost: CostModel) -> Measured:
    config = ClusterConfig(replicas, dataclasses.replace(engine_config(), model="sim"), routing=ROUTING)
    summary, cluster = simulate(config, cost, workload)
    return Measured([cluster.records[r.request_id].ttft for r in workload], summary.output_tokens, summary.duration_s)


def _errors(real: Measured, sim: Measured, label: str) -> dict[str, Any]:
    r, s = real.row(""), sim.row("")
    return {"run": label, **{k: (s[k] - r[k]) / r[k] * 100 for k in ("TTFT mean s", "TTFT p90 s", "throughput tok/s")}}


def crosscheck(scale: Scale) -> Result:
    n, rate = (40, 1.0) if scale.name == "full" else (4, 2.0)
    workload = trace(n, rate)
    cost = load_cost_model(COST)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    ray_real = asyncio.run(_real_ray(workload, 2))
    local_real, steps = _real_local(trace(n, rate / 2))
    real_s = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    slowdown = statistics.mean(t / cost.step_seconds(shape) for shape, t in steps)
    calibrated = dataclasses.replace(cost, step=ScaledCost(cost.step, slowdown))
    ray_sim, local_sim = _simulated(workload, 2, cost), _simulated(trace(n, rate / 2), 1, cost)
    local_cal = _simulated(trace(n, rate / 2), 1, calibrated)
    ray_err, local_err = _errors(ray_real, ray_sim, "error, 2 replicas, %"), _errors(local_real, local_sim, "error, 1 replica, %")
    rows = [ray_real.row("real: 2 SmolLM2 replicas (Ray actors)"), ray_sim.row(f"simulated: 2 replicas ({COST})"), ray_err,
            local_real.row("real: 1 replica in process"), local_sim.row(f"simulated: 1 replica ({COST})"), local_err,
            local_cal.row(f"simulated: 1 replica, steps x{slowdown:.2f} (the real run's)"),
            _errors(local_real, local_cal, "error, 1 replica, calibrated, %")]
    step_error = mean_abs_rel_error(cost.step, steps)
    worst = max(abs(v) for e in (ray_err, local_err) for k, v in e.items() if k != "run")
    cal_err = rows[-1]
    fit = cost.raw.get("fit", {})
    return Result(
        "crosscheck", "Cross-check: the simulator against real runs of the same trace (SmolLM2 on this CPU)",
        anchor="goal: within 5% (Vidur reports under 9%, llm-d's BLIS 7-9%); above 10% is a finding to fix",
        ours=(f"2 replicas: mean TTFT {ray_err['TTFT mean s']:+.0f}%, P90 TTFT {ray_err['TTFT p90 s']:+.0f}%, throughput "
              f"{ray_err['throughput tok/s']:+.0f}%; 1 replica: {local_err['TTFT mean s']:+.0f}%, "
              f"{local_err['TTFT p90 s']:+.0f}%, {local_err['throughput tok/s']:+.0f}%"),
        verdict=("Within the 5% goal." if worst <= 5 else
                 f"{'Within 10%' if worst <= 10 else 'Above 10%: a finding'}. The real run's own steps took "
                 f"{slowdown:.2f}x what the cost model gives for their shapes (mean error {step_error:.0%}; the fit "
                 f"itself is within {fit.get('held_out_mean_abs_rel_error', float('nan')):.0%} on held-out steps "
                 "measured alone). The model keeps each step's fastest of several runs on an idle machine, while "
                 "the runs here share two cores with their router, Ray and other users' work (load average "
                 f"{load_before:.1f} before, {load_after:.1f} after); TTFT, which queues behind slow steps, "
                 "amplifies a step-time gap, while throughput follows the arrivals. With the model scaled by the "
                 f"measured {slowdown:.2f}x, the 1-replica TTFT error is {cal_err['TTFT mean s']:+.0f}% (mean) and "
                 f"{cal_err['TTFT p90 s']:+.0f}% (P90): what remains is time outside steps (the replica loop, the "
                 "router, the stream). Two replicas over Ray on two cores are slowed further by their router and "
                 "Ray's own processes, which no per-step model of one engine captures."),
        columns=["run", "TTFT mean s", "TTFT p90 s", "throughput tok/s"], rows=rows,
        settings={"trace": f"ShareGPT lengths capped at {MAX_PROMPT} prompt / {MAX_OUTPUT} output tokens, {n} requests, "
                           f"Poisson at {rate}/s (2 replicas) and {rate / 2}/s (1 replica)", "routing": ROUTING,
                  "engine": "num_kv_blocks 512, budget 512, 36 seats, auto preemption (the fit's settings)",
                  "real step time / model, 1 replica in process": round(slowdown, 3),
                  "real_runs_wall_s": round(real_s, 1)},
        plot=lambda p: _plot(p, rows),
    )


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["TTFT mean s", "TTFT p90 s", "throughput tok/s"]
    runs = [r for r in rows if not r["run"].startswith("error")]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    for ax, key in zip(axes, keys):
        ax.bar(range(len(runs)), [r[key] for r in runs], color=["#4c72b0", "#dd8452"] * 2)
        ax.set_xticks(range(len(runs)), ["2 real", "2 sim", "1 real", "1 sim"], fontsize=8)
        ax.set_title(key, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
