"""Cross-check: the simulator against a real run of the same trace.

Two real runs, each against its simulation: two SmolLM2 replicas on this CPU as Ray actors (one
torch thread each, as the CPU cost model was measured) behind the real `Router`, fed the trace
at its arrival times; and one replica in this process at half the rate. Both time every engine
step with its shape (the actors through `step_timing`'s engine factory), so each cost model's
error on the real run's own steps is known. The simulated runs are the same traces through
`SimCluster` with the same engine settings, under two cost models: the CPU model fitted alone
(`fit_costs.py`: an engine stepping by itself), and one refitted on the steps of a first run of
the same deployment on another trace. Both count TTFT from a request's arrival to its first
token and throughput as output tokens over first arrival to last token. The errors are the result.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from shunter.loadtest.sim.cluster import ClusterConfig
from shunter.loadtest.sim.costs import CostModel, LinearCost, load_cost_model, mean_abs_rel_error
from shunter.loadtest.sim.experiments.common import Result, Scale, simulate
from shunter.loadtest.sim.fit_costs import fit
from shunter.loadtest.sim.step_timing import ENGINE_FACTORY, STEP_LOG_ENV, Sample, read_step_logs, time_steps
from shunter.loadtest.workloads import WorkloadRequest, sharegpt
from shunter.replica.engine_config import EngineConfig

COST = "smollm2_cpu"
MODEL = "smollm2-135m-instruct"
ROUTING = "least_load"
MAX_PROMPT, MAX_OUTPUT = 384, 64  # ShareGPT lengths, capped so each real run takes 1-4 minutes


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
    from shunter.router.core import Router, RouterConfig

    router = Router(clients, RouterConfig(routing=ROUTING, rebalance=False))
    await router.start()
    vocab = router.info.limits.vocab_size
    warm = [WorkloadRequest(f"warm{i}", 0.0, 32, 4, seed=100 + i) for i in range(len(clients))]
    await asyncio.gather(*(_one(router, w, vocab, 0.0, {}) for w in warm))  # one per replica (least load)
    start, stamps = asyncio.get_running_loop().time(), {}
    await asyncio.gather(*(_one(router, r, vocab, start, stamps) for r in workload))
    await router.stop()
    return stamps


async def _real_ray(workload: list[WorkloadRequest], replicas: int, step_log: Path) -> tuple[Measured, list[Sample]]:
    """Replicas as Ray actors (a process and a CPU each, one torch thread), as `shunter serve` runs
    them, each timing its steps into `step_log` (a directory)."""
    import ray

    from shunter.router.cluster import RayReplicaClient, spawn

    step_log.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=replicas, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {STEP_LOG_ENV: str(step_log)}})
    try:
        clients = [RayReplicaClient(f"x{i}", spawn(f"x{i}", engine_config(), ENGINE_FACTORY, num_cpus=1))
                   for i in range(replicas)]
        measured = _measured(workload, await _drive(clients, workload))
    finally:
        ray.shutdown()
    return measured, read_step_logs(step_log)


def _real_local(workload: list[WorkloadRequest]) -> tuple[Measured, list[Sample]]:
    """One replica in this process, its steps timed with their shapes (what the model prices)."""
    import torch

    from shunter.replica.engine import Engine
    from shunter.router.core import LocalReplicaClient

    torch.set_num_threads(1)
    engine = Engine(engine_config())
    steps: list[Sample] = []
    time_steps(engine, lambda shape, seconds: steps.append((shape, seconds)))
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


# The run this experiment replaced, kept because it is why the refit now happens in the deployment.
BEFORE = ("Before (2026-11-27, this machine shared by five parallel jobs, load average 3-8): the 2-replica refit "
          "used the in-process engine's steps, and the errors were -67% / -70% / +9% (2 replicas) and +5% / +22% / "
          "-0% (1 replica). The same experiment rerun on the quiet machine (load average 1.4, 40 requests) still "
          "missed on 2 replicas: -23% / -30% / +0%.")


def crosscheck(scale: Scale) -> Result:
    n, rate = (100, 1.0) if scale.name == "full" else (4, 2.0)  # 100: a P90 of 40 moved ±6% from run to run
    workload, local_trace = trace(n, rate), trace(n, rate / 2)
    cost = load_cost_model(COST)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # the refits' training runs: the same deployment, another trace
        _, ray_training = asyncio.run(_real_ray(trace(n, rate, seed=12), 2, Path(tmp, "training")))
        ray_real, ray_steps = asyncio.run(_real_ray(workload, 2, Path(tmp, "validation")))
    _, local_training = _real_local(trace(n, rate / 2, seed=12))
    local_real, local_steps = _real_local(local_trace)
    real_s = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    errors, steps_seen, refits = {}, {}, {}
    for label, real, steps, training, replicas, tr in (
            ("2 replicas (Ray actors)", ray_real, ray_steps, ray_training, 2, workload),
            ("1 replica (in process)", local_real, local_steps, local_training, 1, local_trace)):
        refits[label] = LinearCost(fit(training))
        refit = dataclasses.replace(cost, name=f"{cost.name}, refitted where it serves", step=refits[label])
        steps_seen[label] = {**_slowdown(cost, steps), "refit_error": mean_abs_rel_error(refits[label], steps)}
        isolated, refitted = _simulated(tr, replicas, cost), _simulated(tr, replicas, refit)
        errors[label] = (_errors(real, isolated, "error, %"), _errors(real, refitted, "error, %"))
        rows += [real.row(f"real, {label}"), isolated.row(f"simulated, cost model fitted alone ({COST})"),
                 errors[label][0], refitted.row("simulated, cost model refitted on the same deployment's steps"),
                 errors[label][1]]
    (ray_err, ray_refit), (local_err, local_refit) = errors.values()
    ray_seen, local_seen = steps_seen.values()
    worst = max(abs(v) for e in (ray_refit, local_refit) for k, v in e.items() if k != "run")
    fit_info = cost.raw.get("fit", {})
    return Result(
        "crosscheck", "Cross-check: the simulator against real runs of the same trace (SmolLM2 on this CPU)",
        anchor="goal: within 5% (Vidur reports under 9%, llm-d's BLIS 7-9%); above 10% is a finding to fix",
        ours=(f"errors (mean TTFT / P90 TTFT / throughput) with the cost model fitted alone: 2 replicas "
              f"{_triple(ray_err)}, 1 replica {_triple(local_err)}; refitted on steps timed in the same deployment "
              f"serving another trace: 2 replicas {_triple(ray_refit)}, 1 replica {_triple(local_refit)}"),
        verdict=(("Within the 5% goal with the refitted models. " if worst <= 5 else
                  "Within 10% with the refitted models, short of the 5% goal. " if worst <= 10 else
                  "Above 10% even refitted: a finding. ") +
                 "Fitted alone (an engine stepping by itself, "
                 f"{fit_info.get('held_out_mean_abs_rel_error', float('nan')):.0%} error on its held-out steps), the "
                 f"model is off where the engine serves: in the two Ray actors the steps took {_ratios(ray_seen)}; "
                 f"in one engine in this process, {_ratios(local_seen)}. Two replicas on this machine's two cores "
                 "slow each other's prefills, which no engine measured alone can show. TTFT, which queues behind "
                 "slow steps, amplifies a step-time gap; throughput follows the arrivals. Refitted on steps timed "
                 "in the same deployment serving another trace (the Ray actors time their own steps: "
                 f"`loadtest/sim/step_timing.py`), the models are within {ray_seen['refit_error']:.0%} (2 replicas) "
                 f"and {local_seen['refit_error']:.0%} (1 replica) of the validation runs' steps: cost models must "
                 f"be measured where the engine will run. Load average {load_before:.1f} before, {load_after:.1f} "
                 "after."),
        columns=["run", "TTFT mean s", "TTFT p90 s", "throughput tok/s"], rows=rows,
        notes=[BEFORE] if scale.name == "full" else [],
        settings={"trace": f"ShareGPT lengths capped at {MAX_PROMPT} prompt / {MAX_OUTPUT} output tokens, {n} requests, "
                           f"Poisson at {rate}/s (2 replicas) and {rate / 2}/s (1 replica); the refits' training runs: "
                           "the same deployments and shape, another seed", "routing": ROUTING,
                  "engine": "num_kv_blocks 512, budget 512, 36 seats, auto preemption (the fit's settings)",
                  "steps, real / model fitted alone": {k: {m: round(v, 3) for m, v in seen.items()}
                                                       for k, seen in steps_seen.items()},
                  "refitted models": {k: {f: round(v, 6) for f, v in m.coefficients.items()} for k, m in refits.items()},
                  "real_runs_wall_s": round(real_s, 1)},
        plot=lambda p: _plot(p, rows),
    )


def _slowdown(cost: CostModel, steps: list[Sample]) -> dict[str, float]:
    """Measured step time over the model's, on average: all steps, decode-only ones, ones with a prefill."""
    def ratio(samples: list[Sample]) -> float:
        return statistics.mean(t / cost.step_seconds(s) for s, t in samples) if samples else float("nan")

    return {"all": ratio(steps), "decode": ratio([(s, t) for s, t in steps if s.num_tokens == s.num_seqs]),
            "prefill": ratio([(s, t) for s, t in steps if s.num_tokens > s.num_seqs])}


def _ratios(seen: dict[str, float]) -> str:
    return (f"{seen['all']:.2f}x what it gives for their shapes ({seen['decode']:.2f}x for decode-only steps, "
            f"{seen['prefill']:.2f}x for steps with a prefill)")


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
