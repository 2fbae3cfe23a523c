"""What every experiment shares: its result's shape, its scale, and running one cluster on one workload."""
from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from shunter.loadtest.sim.cluster import ClusterConfig, SimCluster
from shunter.loadtest.sim.costs import CostModel, load_cost_model
from shunter.loadtest.sim.metrics import Summary
from shunter.loadtest.sim.runner import CheapTokens
from shunter.loadtest.workloads import WorkloadRequest
from shunter.replica.engine_config import EngineConfig
from shunter.replica.request import Request

Plot = Callable[[Path], None]


@dataclass
class Result:
    """One experiment's outcome: a table, a plot, and how it compares with its anchor."""

    name: str
    title: str
    anchor: str  # the published number(s) we compare with, and where they come from
    ours: str  # our headline number(s), one line
    verdict: str  # agreement or disagreement, and why, in a sentence or two
    columns: list[str]
    rows: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plot: Plot | None = field(default=None, repr=False)
    wall_s: float = 0.0


@dataclass(frozen=True)
class Scale:
    """`full` is the benchmark; `toy` runs each experiment in seconds (tests, smoke runs)."""

    name: str
    requests: Callable[[int], int]  # full-scale request count -> this scale's
    replicas: Callable[[int], int]

    def n(self, full: int) -> int:
        return self.requests(full)

    def r(self, full: int) -> int:
        return self.replicas(full)


SCALES = {
    "full": Scale("full", lambda n: n, lambda r: r),
    "toy": Scale("toy", lambda n: max(16, n // 50), lambda r: max(2, r // 8)),
}


def engine(**settings: Any) -> EngineConfig:
    """A simulated replica's engine settings (no model is loaded: the name is a label)."""
    return EngineConfig(model="sim", **settings)


def eos_at_output_len(cost: CostModel, workload: list[WorkloadRequest]) -> Callable[[Request, int], int]:
    """A token function whose model ends each request with EOS at its workload length, so a client
    asking for more (`max_tokens`) does not tell the router how long the answer will be."""
    lengths = {r.request_id: r.output_len for r in workload}
    eos, plain = cost.eos_token_ids[0], CheapTokens(cost.vocab_size)

    def token(request: Request, end: int) -> int:  # once per simulated token: `num_output_tokens` inlined
        if len(request.output_token_ids) + 1 >= lengths[request.request_id]:
            return eos
        return plain(request, end)

    return token


def simulate(config: ClusterConfig, cost: CostModel | str, workload: list[WorkloadRequest],
             max_tokens: int | None = None, progress: str | None = None,
             probe: tuple[float, Callable[[SimCluster], None]] | None = None) -> tuple[Summary, SimCluster]:
    """Run `workload` on a fresh cluster. `max_tokens`: clients ask for this many tokens and the
    model stops each request at its workload length by EOS (lengths unknown in advance); None:
    clients ask for exactly the workload length. `probe=(interval, fn)` samples the cluster."""
    if config.num_replicas >= 100:  # free a previous run's cluster (cyclic garbage) first: 1,000 replicas hold ~3 GB
        gc.collect()  # before the clocks start: the last run's garbage is not this run's work
    started, cpu_started = time.perf_counter(), time.process_time()  # the whole run, building the cluster included
    cost = load_cost_model(cost) if isinstance(cost, str) else cost
    if max_tokens is not None:
        workload = [dataclasses.replace(r, output_len=min(r.output_len, max_tokens)) for r in workload]
    token_fn = eos_at_output_len(cost, workload) if max_tokens is not None else None
    cluster = SimCluster(config, cost, token_fn=token_fn, client_max_tokens=max_tokens)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(workload), desc=progress, unit="req", leave=False, mininterval=1.0)
        cluster.on_finish = lambda _record: bar.update(1)
    if probe is not None:
        interval, fn = probe
        cluster.every(interval, lambda: fn(cluster))
    summary = cluster.run(workload)
    summary.extra["wall_s"] = time.perf_counter() - started
    summary.extra["cpu_s"] = time.process_time() - cpu_started  # this process's: other users' load left out
    if bar is not None:
        bar.close()
    return summary, cluster


def pct_change(new: float, old: float) -> float:
    return (new - old) / old * 100 if old else float("nan")
