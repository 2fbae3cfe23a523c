"""Cross-check: the simulator against a real run of the same trace.

Two real runs, each against its simulation: two SmolLM2 replicas on this CPU as Ray actors (one
torch thread each, as the CPU cost model was measured) behind the real `Router`, fed the trace
at its arrival times; and one replica in this process at half the rate, whose steps are timed
with their shapes, so the cost model's error on the real run's own steps is known. The simulated
runs are the same traces through `SimCluster` with the same engine settings, under two cost
models: the CPU model fitted alone (`fit_costs.py`: an engine stepping by itself), and one
refitted on steps timed inside the serving loop during a first run on another trace. Both count TTFT from a request's arrival to its first token and throughput as output
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
from shunter.loadtest.sim.costs import CostModel, LinearCost, StepShape, load_cost_model, mean_abs_rel_error
from shunter.loadtest.sim.fit_costs import fit
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


def trace(n: int, rate: float, seed: int = 11) -> list[WorkloadRequest]:
    return [dataclasses.replace(r, prompt_len=min(r.prompt_len, MAX_PROMPT), output_len=min(r.output_len, MAX_OUTPUT))
            for r in sharegpt(n, rate, seed=seed)]


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
    workload, local_trace = trace(n, rate), trace(n, rate / 2)
    cost = load_cost_model(COST)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    _, harness_steps = _real_local(trace(n, rate / 2, seed=12))  # another trace: the refit's training data
    ray_real = asyncio.run(_real_ray(workload, 2))
    local_real, steps = _real_local(local_trace)
    real_s = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    slowdown = statistics.mean(t / cost.step_seconds(shape) for shape, t in steps)
    step_error = mean_abs_rel_error(cost.step, steps)
    harness_step = LinearCost(fit(harness_steps))
    harness = dataclasses.replace(cost, name=f"{cost.name}, refitted in the serving loop", step=harness_step)
    harness_error = mean_abs_rel_error(harness_step, steps)
    rows: list[dict[str, Any]] = []
    errors = {}
    for label, real, replicas, tr in (("2 replicas (Ray actors)", ray_real, 2, workload),
                                      ("1 replica (in process)", local_real, 1, local_trace)):
        isolated, refit = _simulated(tr, replicas, cost), _simulated(tr, replicas, harness)
        errors[label] = (_errors(real, isolated, "error, %"), _errors(real, refit, "error, %"))
        rows += [real.row(f"real, {label}"), isolated.row(f"simulated, cost model fitted alone ({COST})"),
                 errors[label][0], refit.row("simulated, cost model refitted in the serving loop"), errors[label][1]]
    (ray_err, ray_refit), (local_err, local_refit) = errors.values()
    worst = max(abs(v) for e in (ray_refit, local_refit) for k, v in e.items() if k != "run")
    fit_info = cost.raw.get("fit", {})
    return Result(
        "crosscheck", "Cross-check: the simulator against real runs of the same trace (SmolLM2 on this CPU)",
        anchor="goal: within 5% (Vidur reports under 9%, llm-d's BLIS 7-9%); above 10% is a finding to fix",
        ours=(f"errors (mean TTFT / P90 TTFT / throughput) with the cost model fitted alone: 2 replicas "
              f"{_triple(ray_err)}, 1 replica {_triple(local_err)}; refitted in the serving loop on another trace: "
              f"2 replicas {_triple(ray_refit)}, 1 replica {_triple(local_refit)}"),
        verdict=(("Within the 5% goal with the refitted model. " if worst <= 5 else
                  "Within 10% with the refitted model, short of the 5% goal. " if worst <= 10 else
                  "Above 10% even refitted: a finding. ") +
                 f"Fitted alone, the model is off: the real run's steps took {slowdown:.2f}x what it gives for their "
                 f"shapes (mean error {step_error:.0%}, against "
                 f"{fit_info.get('held_out_mean_abs_rel_error', float('nan')):.0%} on held-out steps of an engine "
                 "stepping by itself): in the serving loop a step shares the process and two cores with the router, "
                 "the replica loop, Ray and other users' work (load average "
                 f"{load_before:.1f} before, {load_after:.1f} after). TTFT, which queues behind slow steps, amplifies "
                 "a step-time gap; throughput follows the arrivals. Refitted on steps timed inside the serving loop "
                 f"(another trace), the model is within {harness_error:.0%} of the validation run's steps: cost "
                 "models must be measured where the engine will run."),
        columns=["run", "TTFT mean s", "TTFT p90 s", "throughput tok/s"], rows=rows,
        settings={"trace": f"ShareGPT lengths capped at {MAX_PROMPT} prompt / {MAX_OUTPUT} output tokens, {n} requests, "
                           f"Poisson at {rate}/s (2 replicas) and {rate / 2}/s (1 replica); the refit's training run: "
                           "the same shape, another seed", "routing": ROUTING,
                  "engine": "num_kv_blocks 512, budget 512, 36 seats, auto preemption (the fit's settings)",
                  "real step time / model fitted alone, 1 replica in process": round(slowdown, 3),
                  "refitted model": {k: round(v, 6) for k, v in harness_step.coefficients.items()},
                  "real_runs_wall_s": round(real_s, 1)},
        plot=lambda p: _plot(p, rows),
    )


def _triple(e: dict[str, Any]) -> str:
    return f"{e['TTFT mean s']:+.0f}% / {e['TTFT p90 s']:+.0f}% / {e['throughput tok/s']:+.0f}%"


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["TTFT mean s", "TTFT p90 s", "throughput tok/s"]
    runs = [r for r in rows if not r["run"].startswith("error")]
    labels = ["2 real", "2 sim", "2 sim\nrefit", "1 real", "1 sim", "1 sim\nrefit"]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    for ax, key in zip(axes, keys):
        ax.bar(range(len(runs)), [r[key] for r in runs], color=["#4c72b0", "#dd8452", "#c44e52"] * 2)
        ax.set_xticks(range(len(runs)), labels[: len(runs)], fontsize=7)
        ax.set_title(key, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
