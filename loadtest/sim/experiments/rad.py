"""RAD (issue 30) on one replica: its capacity and latency against a Sarathi-style fixed budget,
decode-first with RAD's budget and SLAI, on the SLAI experiment's setup and on the H100 model;
and its tile-aligned steps against the same steps sized without the staircase."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from shunter.loadtest.sim.cluster import ClusterConfig, SimCluster
from shunter.loadtest.sim.costs import load_cost_model
from shunter.loadtest.sim.experiments.common import Result, Scale, engine, simulate
from shunter.loadtest.sim.metrics import Summary
from shunter.loadtest.workloads import WorkloadRequest, long_mix, sharegpt

ADA, H100 = "rtx6000ada_mistral-7b", "h100_mistral-7b"
TTFT_TARGET_S = 0.5
# label, policy, token budget, policy settings
SCHEDULERS = (("Sarathi-style (fcfs, 512)", "fcfs", 512, {}), ("decode-first (fcfs, 2048)", "fcfs", 2048, {}),
              ("RAD (rad, 2048)", "rad", 2048, {}), ("SLAI (slo, <= 2048)", "slo", 2048, {}))
# setup label, cost model, seats, first rate tried, schedulers: the SLAI experiment's setup (128 seats), the
# H100 model, and (a sensitivity check) the Ada with the 512 seats its KV pool holds at ShareGPT's lengths
SETUPS = (("SLAI setup", ADA, 128, 4.0, SCHEDULERS), ("H100", H100, 128, 8.0, SCHEDULERS),
          ("SLAI setup, 512 seats", ADA, 512, 8.0, SCHEDULERS[:3]))


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average at the end of the run: {one:.2f} (1 min), {five:.2f} (5 min), on 2 shared cores"


def _run(model: str, seats: int, policy: str, budget: int, settings: dict, rate: float,
         n: int) -> tuple[Summary, SimCluster]:
    config = ClusterConfig(1, engine(max_num_seqs=seats, max_num_batched_tokens=budget, policy=policy,
                                     policy_settings=settings))
    return simulate(config, model, sharegpt(n, rate, seed=3, ttft_ms=TTFT_TARGET_S * 1e3, tbt_ms=100.0))


def waiting_at_last_arrival(cluster: SimCluster) -> int:
    """Requests that had arrived and not yet started making tokens when the last one arrived:
    a queue that grows with the trace shows here (a bounded one stays near rate x TTFT)."""
    last = max(r.arrival for r in cluster.records.values())
    return sum(1 for r in cluster.records.values() if r.first_token is None or r.first_token > last)


def _point(setup: tuple, scheduler: tuple, rate: float, n: int) -> dict[str, Any]:
    name, model, seats, *_ = setup
    label, policy, budget, settings = scheduler
    s, cluster = _run(model, seats, policy, budget, settings, rate, n)
    waiting = waiting_at_last_arrival(cluster)
    bounded = waiting <= max(10, n // 50)
    return {"setup": name, "scheduler": label, "rate": rate, "TTFT p50 s": s.ttft_p50, "TTFT p99 s": s.ttft_p99,
            "TBT p50 ms": s.tbt_p50 * 1e3, "TBT p99 ms": s.tbt_p99 * 1e3, "output tok/s": s.throughput_tok_s,
            "waiting at last arrival": waiting, "preemptions": s.preemptions,
            "meets": bounded and s.ttft_p50 < TTFT_TARGET_S}


def capacity(setup: tuple, scheduler: tuple, n: int, steps: int, trace: list) -> float:
    """The largest rate with a bounded queue and median TTFT under the target: doubling from the
    setup's first rate until one fails, then `steps` bisections."""
    def meets(rate: float) -> bool:
        trace.append(_point(setup, scheduler, rate, n))
        return trace[-1]["meets"]

    lo, hi = 0.0, setup[3]
    while meets(hi):
        lo, hi = hi, hi * 2
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if meets(mid) else (lo, mid)
    return lo


def rad(scale: Scale) -> Result:
    n = scale.n(1000)  # the capacity search runs ~100 simulations: 1,000 requests each keeps it to minutes
    steps = 4 if scale.name == "full" else 1
    trace: list[dict[str, Any]] = []
    rows = []
    caps: dict[tuple[str, str], float] = {}
    for setup in SETUPS:
        name, _, seats, _, schedulers = setup
        for sched in schedulers:
            caps[name, sched[0]] = capacity(setup, sched, n, steps, trace)
        base = caps[name, schedulers[0][0]]
        for sched in schedulers:
            cap = caps[name, sched[0]]
            own = _point(setup, sched, 0.8 * cap, n) if cap > 0 else None
            equal = _point(setup, sched, 0.8 * base, n) if base > 0 else None
            rows.append({"setup": name, "scheduler": sched[0], "capacity req/s": cap,
                         "x Sarathi-style": cap / base if base else math.nan,
                         **{f"{k} @80%": own[k] if own else math.nan for k in
                            ("TTFT p50 s", "TTFT p99 s", "TBT p50 ms", "TBT p99 ms")},
                         "TTFT p50 s @80% of Sarathi's": equal["TTFT p50 s"] if equal else math.nan,
                         "TBT p99 ms @80% of Sarathi's": equal["TBT p99 ms"] if equal else math.nan})
    rad_label, sarathi = SCHEDULERS[2][0], SCHEDULERS[0][0]
    ada_x = caps["SLAI setup", rad_label] / caps["SLAI setup", sarathi] if caps["SLAI setup", sarathi] else math.nan
    wide_x = caps["SLAI setup, 512 seats", rad_label] / caps["SLAI setup, 512 seats", sarathi]
    h100_best = max(c for (m, _), c in caps.items() if m == "H100")
    h100_ok = caps["H100", rad_label] >= h100_best
    verdict = (
        f"Goal 1 (RAD >= 1.26x Sarathi-style on the SLAI setup): {'met' if ada_x >= 1.26 else 'not met'} "
        f"({ada_x:.2f}x). Goal 2 (RAD no lower than any other on the H100 model): {'met' if h100_ok else 'not met'}. "
        "With 128 seats a replica is seat-bound: ShareGPT's requests are short (161 prompt and 338 output "
        "tokens on average), so a step carries the seats' decodes and a few dozen prefill tokens, well under every "
        "budget, and a request holds its seat for ~338 decode steps of ~30 ms (the TBT median: the weights and the "
        "decodes' KV read once a step). Requests leave at about seats / (338 x step time) whatever fills the steps, "
        "so neither the budget nor the tiles nor the split can move capacity: RAD's split differs from "
        "decode-first's only when the decodes alone fill a step (more seats than budget), its tiling only when a "
        "saturated step would spill past a tile (experiment tiling). With 512 seats the steps outgrow a 512-token "
        "budget near capacity, so a 2,048-token budget (decode-first's or RAD's) gains on Sarathi-style's; RAD "
        "still runs decode-first's schedule. Each capacity is known only to the bisection's last interval "
        "(the trace's neighbouring rates: 0.5 req/s at 1,000 requests on the SLAI setup, 1 req/s on the H100 "
        "model, 1-2 req/s with 512 seats), so a difference of one interval is within the measurement.")
    return Result(
        "rad", "RAD against a Sarathi-style fixed budget, decode-first and SLAI (ShareGPT, Mistral-7B, analytic)",
        anchor="RAD (Bari, Hegde, de Veciana 2025) is proven throughput-optimal; the paper's measured gain is "
               "SLAI's: +26% capacity (median TTFT < 0.5 s) over Sarathi-Serve, Mistral-7B on an RTX 6000 Ada",
        ours=f"RAD's capacity {caps['SLAI setup', rad_label]:.2f} req/s on the SLAI setup ({ada_x:.2f}x "
             f"Sarathi-style's {caps['SLAI setup', sarathi]:.2f}), {caps['H100', rad_label]:.2f} req/s on the H100 "
             f"model (best of all: {h100_best:.2f}); with 512 seats on the Ada {wide_x:.2f}x Sarathi-style's",
        verdict=verdict, columns=list(rows[0]), rows=rows,
        settings={"cost_models": f"{ADA}, {H100} (both with 128-token tiles)",
                  "workload": f"sharegpt, {n} requests, Poisson, seed 3",
                  "max_num_seqs": "128 (the SLAI experiment's), 512 in the sensitivity check",
                  "capacity": f"largest rate whose median TTFT < {TTFT_TARGET_S} s with a bounded queue (at most "
                              f"max(10, n/50) requests waiting to start when the last one arrives): doubling, then "
                              f"{steps} bisections", "trace": trace},
        notes=[load_note()],
        plot=lambda p: _capacity_plot(p, trace, caps),
    )


def _capacity_plot(path: Path, trace: list[dict[str, Any]], caps: dict[tuple[str, str], float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SETUPS), figsize=(5 * len(SETUPS), 3.8))
    for ax, (name, model, seats, _, schedulers) in zip(axes, SETUPS):
        for label, *_ in schedulers:
            pts = sorted((t["rate"], t["TTFT p50 s"]) for t in trace if t["setup"] == name and t["scheduler"] == label)
            line, = ax.plot([p[0] for p in pts], [max(p[1], 1e-3) for p in pts], "o-", ms=3,
                            label=f"{label}: {caps[name, label]:.1f}/s")
            ax.axvline(caps[name, label], color=line.get_color(), ls=":", lw=0.8)
        ax.axhline(TTFT_TARGET_S, color="grey", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("arrival rate (req/s)")
        ax.set_ylabel("median TTFT (s)")
        ax.set_title(f"{name}: {model}, {seats} seats", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- tile-aligned against unaligned steps ----------------------------------------------------------------
UNALIGNED = (520, 600, 700, 1100, 1300, 2000)  # budgets off the 128-token tiles
ALIGNED = (512, 1024, 2048)  # on them: the two must agree


def _tokens_per_s(model: str, budget: int, aligned: bool, workload: list[WorkloadRequest]) -> float:
    config = ClusterConfig(1, engine(max_num_seqs=256, max_num_batched_tokens=budget, policy="rad",
                                     policy_settings={"tile_aligned": aligned}))
    summary, cluster = simulate(config, model, workload)
    total = sum(r.prompt_len + r.num_tokens for r in cluster.records.values())
    return total / summary.duration_s


def tiling(scale: Scale) -> Result:
    """Offline batches (everything at t=0: saturation) on the H100 model, RAD with and without
    the staircase, at budgets on and off the tiles: prompt + output tokens per second."""
    workloads = {"prefill-bound (1,024-2,048-token prompts, 16-64 out)":
                 long_mix(scale.n(300), math.inf, seed=4, long_fraction=1.0, long_prompt=(1024, 2048),
                          long_output=(16, 64)),
                 "ShareGPT": sharegpt(scale.n(1000), math.inf, seed=1)}
    rows = []
    budgets = UNALIGNED + ALIGNED if scale.name == "full" else (UNALIGNED[0], ALIGNED[0])  # toy: one of each
    for name, workload in workloads.items():
        for budget in budgets:
            on, off = (_tokens_per_s(H100, budget, a, workload) for a in (True, False))
            rows.append({"workload": name, "budget": budget, "on a tile": budget in ALIGNED,
                         "aligned tok/s": on, "unaligned tok/s": off, "aligned / unaligned": on / off})
    stairs = load_cost_model(H100).staircase(1024)
    per_step = stairs.aligned_gain()
    prefill = [r["aligned / unaligned"] for r in rows if r["workload"].startswith("prefill") and not r["on a tile"]]
    share = [r["aligned / unaligned"] for r in rows if r["workload"] == "ShareGPT" and not r["on a tile"]]
    mean_prefill, mean_share = sum(prefill) / len(prefill), sum(share) / len(share)
    met = mean_prefill >= 1.05 and mean_share >= 1.05
    return Result(
        "tiling", "Tile-aligned against unaligned steps at saturation (RAD, Mistral-7B on one H100, analytic)",
        anchor="RAD's optimal-tiling principle (Bari, Hegde, de Veciana 2025): a step that fills part of a tile pays "
               "for all of it; issue 30's goal: >= 5% more tokens/s than unaligned at saturation",
        ours=f"at budgets off the tiles, aligned/unaligned = {mean_prefill:.3f} on average for prefill-bound work "
             f"({min(prefill):.3f}-{max(prefill):.3f}) and {mean_share:.3f} for ShareGPT; 1.000 on the tiles; the "
             f"cost model's own staircase gives {per_step:.3f} per saturated step, averaged over budgets of "
             "16..1,024 tokens",
        verdict=(f"Goal {'met' if met else 'not met'}. The gain is the tile a spilling budget pays for and barely "
                 "uses, so it is large just past a boundary (520 = 512 + 8) and vanishes at a budget on a tile, where "
                 "aligned and unaligned steps are the same steps; it is diluted by the H100 model's 4.25 ms of host "
                 "time per step (paid whatever the tiles) and, for ShareGPT, by decode steps that are memory-bound "
                 "(flat, no stairs) and never saturate the budget. These are the analytic model's 128-token tiles, "
                 "assumed; `scripts/gpu-check.sh` times the real staircase (`shunter bench staircase`)."),
        columns=list(rows[0]), rows=rows,
        settings={"cost_model": f"{H100} (tile_tokens 128)", "policy": "rad, tile_aligned on/off",
                  "max_num_seqs": 256, "staircase": stairs.to_dict()},
        notes=[load_note()],
        plot=lambda p: _tiling_plot(p, rows),
    )


def _tiling_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    names = list(dict.fromkeys(r["workload"] for r in rows))
    width = 0.8 / len(names)
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    for k, name in enumerate(names):
        gains = [next(r["aligned / unaligned"] for r in rows if r["workload"] == name and r["budget"] == b)
                 for b in budgets]
        ax.bar([i + k * width for i in range(len(budgets))], gains, width, label=name)
    ax.axhline(1.05, color="grey", ls="--", lw=0.8)
    ax.set_xticks([i + width / 2 for i in range(len(budgets))], [str(b) for b in budgets])
    ax.set_ylim(0.95, max(1.1, max(r["aligned / unaligned"] for r in rows) + 0.02))
    ax.set_xlabel("max_num_batched_tokens")
    ax.set_ylabel("aligned / unaligned tokens/s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
