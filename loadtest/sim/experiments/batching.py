"""One replica's scheduling: static against continuous batching, chunked prefill against none, and
SLAI against Sarathi-Serve (FCFS with chunked prefill and a fixed token budget)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from shunter.loadtest.sim.cluster import ClusterConfig
from shunter.loadtest.sim.costs import load_cost_model
from shunter.loadtest.sim.experiments.common import Result, Scale, engine, pct_change, simulate
from shunter.loadtest.sim.metrics import Summary
from shunter.loadtest.workloads import long_mix, sharegpt

H100_8B = "h100_llama-3-8b"
ADA_MISTRAL = "rtx6000ada_mistral-7b"


def _bars(path: Path, labels: list[str], values: list[float], ylabel: str, title: str, log: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(labels, values, color="#4c72b0")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    for i, v in enumerate(values):
        ax.annotate(f"{v:,.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- 1: static against continuous batching ---------------------------------------------------------
def static(scale: Scale) -> Result:
    """Offline ShareGPT batch: throughput under continuous batching and under static batches."""
    n, seqs = scale.n(2000), 256
    workload = sharegpt(n, math.inf, seed=1)
    runs: list[tuple[str, Summary]] = []
    for label, policy, settings in [("continuous (fcfs)", "fcfs", {}),
                                    *[(f"static, batch {b}", "static", {"batch_size": b}) for b in (256, 32, 8)]]:
        config = ClusterConfig(1, engine(max_num_seqs=seqs, max_num_batched_tokens=2048, policy=policy,
                                         policy_settings=settings))
        summary, _ = simulate(config, H100_8B, workload, progress=label)
        runs.append((label, summary))
    cont = runs[0][1].throughput_tok_s
    rows = [{"scheduling": label, "throughput tok/s": s.throughput_tok_s, "makespan s": s.duration_s,
             "continuous / this": cont / s.throughput_tok_s} for label, s in runs]
    best_static = runs[1][1].throughput_tok_s
    ratio, worst = cont / best_static, cont / runs[-1][1].throughput_tok_s
    return Result(
        "static", "Static against continuous batching (offline ShareGPT, Llama-3-8B on one H100, analytic)",
        anchor="Orca (OSDI'22): up to 23x throughput at the same latency; vLLM (SOSP'23 blog): up to 24x over "
               "Hugging Face generate (static batches, max-length KV reservation, padding)",
        ours=f"continuous batching gives {ratio:.1f}x the throughput of static batches of the same size (256), "
             f"{worst:.1f}x that of static batches of 8",
        verdict=(f"At equal batch size continuous batching gains {ratio:.1f}x, well below the anchors: that is the idle "
                 "seats of finished requests alone. The anchors' static baselines also reserved KV for the maximum "
                 "length, which caps their batch: a 7B model on a 24 GB A10G (vLLM's 24x setting) keeps ~8 GB for KV, "
                 "at 0.5 MB per token and 2,048 reserved tokens per sequence about 8 sequences. With static batches "
                 f"of 8 the gap is {worst:.0f}x, the anchors' order of magnitude (they also count padding and slower "
                 "kernels, which this simulation leaves out)."),
        columns=["scheduling", "throughput tok/s", "makespan s", "continuous / this"], rows=rows,
        settings={"cost_model": H100_8B, "workload": f"sharegpt, {n} requests, all at t=0", "max_num_seqs": seqs,
                  "max_num_batched_tokens": 2048},
        plot=lambda p: _bars(p, [r["scheduling"] for r in rows], [r["throughput tok/s"] for r in rows],
                             "output tokens / s", "offline ShareGPT, Llama-3-8B on H100 (analytic)"),
    )


# ---- 2: chunked prefill against none -----------------------------------------------------------------
def chunked(scale: Scale) -> Result:
    """Chat traffic with 10% long documents: TBT with prefills chunked to a budget, and unchunked."""
    n, rate, share = scale.n(3000), 12.0, 0.2
    workload = long_mix(n, rate, seed=2, long_fraction=share, long_prompt=(2048, 7680), long_output=(64, 256))
    runs: list[tuple[str, Summary]] = []
    for label, budget in [("chunked, 512", 512), ("chunked, 2048", 2048), ("no chunking (16,384)", 16384)]:
        config = ClusterConfig(1, engine(max_num_seqs=256, max_num_batched_tokens=budget))
        summary, _ = simulate(config, H100_8B, workload, progress=label)
        runs.append((label, summary))
    rows = [{"prefill": label, "TBT p50 ms": s.tbt_p50 * 1e3, "TBT p99 ms": s.tbt_p99 * 1e3,
             "TBT p99.9 ms": s.tbt_p999 * 1e3, "TBT max ms": s.tbt_max * 1e3, "TTFT p50 ms": s.ttft_p50 * 1e3,
             "TTFT p99 ms": s.ttft_p99 * 1e3, "throughput tok/s": s.throughput_tok_s} for label, s in runs]
    small, none = runs[0][1], runs[-1][1]
    return Result(
        "chunked", "Chunked prefill against none: TBT with long prompts (Llama-3-8B on one H100, analytic)",
        anchor="Sarathi-Serve (OSDI'24): chunked prefills with stall-free batching bound TBT by the token budget; "
               "2.6x serving capacity under a P99 TBT SLO for Mistral-7B on one A100",
        ours=f"TBT p99 {small.tbt_p99 * 1e3:.0f} / p99.9 {small.tbt_p999 * 1e3:.0f} / max {small.tbt_max * 1e3:.0f} ms "
             f"with a 512-token budget, against {none.tbt_p99 * 1e3:.0f} / {none.tbt_p999 * 1e3:.0f} / "
             f"{none.tbt_max * 1e3:.0f} ms unchunked; TTFT p99 {small.ttft_p99 * 1e3:.0f} against "
             f"{none.ttft_p99 * 1e3:.0f} ms",
        verdict=("Agrees in kind: an unchunked long prefill stalls every running decode for the whole prefill, so the "
                 "worst gaps between tokens grow with the longest prompt, while a budget caps every step. Which "
                 "percentile shows it depends on how many gaps the stalls touch: a 2,048 budget stalls more gaps "
                 "(each long prompt over several steps) for less time each. Chunking costs TTFT: a long prompt takes "
                 "several steps. Capacity under a TBT SLO is searched in experiment slai."),
        columns=list(rows[0]), rows=rows,
        settings={"cost_model": H100_8B, "workload": f"long-mix, {n} requests at {rate:g}/s, {share:.0%} of them "
                                                     "2,048-7,680-token prompts", "max_num_seqs": 256},
        plot=lambda p: _bars(p, [r["prefill"] for r in rows], [r["TBT p99.9 ms"] for r in rows], "p99.9 TBT (ms)",
                             "long-mix on Llama-3-8B / H100 (analytic)", log=True),
    )


# ---- 3: SLAI against Sarathi-Serve --------------------------------------------------------------------
TTFT_SLO_S, TBT_SLO_MS = 0.5, 100.0


def _slai_run(policy: str, rate: float, n: int, seed: int) -> Summary:
    """Mistral-7B on an RTX 6000 Ada: Sarathi-Serve = FCFS with a fixed 512-token budget; SLAI
    may size steps up to 2,048 tokens itself to meet each request's TBT target."""
    budget = 512 if policy == "fcfs" else 2048
    config = ClusterConfig(1, engine(max_num_seqs=128, max_num_batched_tokens=budget, policy=policy))
    workload = sharegpt(n, rate, seed=seed, ttft_ms=TTFT_SLO_S * 1e3, tbt_ms=TBT_SLO_MS)
    summary, _ = simulate(config, ADA_MISTRAL, workload)
    return summary


def _meets(s: Summary) -> bool:
    return s.ttft_p50 < TTFT_SLO_S and s.tbt_p99 * 1e3 <= TBT_SLO_MS


def _capacity(policy: str, n: int, start: float, steps: int) -> tuple[float, list[dict[str, Any]]]:
    """Highest rate (req/s) meeting both targets: doubling from `start` until a rate fails, then
    `steps` bisections between the last that met them and the first that did not."""
    trace: list[dict[str, Any]] = []

    def meets(rate: float) -> bool:
        s = _slai_run(policy, rate, n, seed=3)
        trace.append({"policy": policy, "rate": rate, "TTFT p50 s": s.ttft_p50, "TBT p99 ms": s.tbt_p99 * 1e3,
                      "meets": _meets(s)})
        return _meets(s)

    lo, hi = 0.0, start
    while meets(hi):
        lo, hi = hi, hi * 2
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if meets(mid) else (lo, mid)
    return lo, trace


def slai(scale: Scale) -> Result:
    cost = load_cost_model(ADA_MISTRAL)
    n = scale.n(2000)
    steps = 6 if scale.name == "full" else 2
    caps, trace = {}, []
    for policy in ("fcfs", "slo"):
        caps[policy], t = _capacity(policy, n, 2.0, steps)
        trace += t
    rate = caps["fcfs"]
    policies = ("fcfs", "slo")
    equal = {p: _slai_run(p, rate, n, seed=3) for p in policies}  # the capacity search's trace
    own = {p: _slai_run(p, caps[p], n, seed=3) for p in policies}
    rows = [{"scheduler": "Sarathi-Serve (fcfs, budget 512)" if p == "fcfs" else "SLAI (slo, budget <= 2048)",
             "capacity req/s": caps[p], "TTFT p50 s (equal load)": equal[p].ttft_p50,
             "TTFT p99 s (equal load)": equal[p].ttft_p99, "TBT p99 ms (equal load)": equal[p].tbt_p99 * 1e3,
             "TTFT p90 s at capacity": own[p].ttft_p90, "served / offered at capacity": own[p].request_rate / caps[p],
             "preemptions": equal[p].preemptions} for p in policies]
    ttft_change = pct_change(equal["slo"].ttft_p50, equal["fcfs"].ttft_p50)
    cap_change = pct_change(caps["slo"], caps["fcfs"])
    tail_x = equal["slo"].ttft_p99 / equal["fcfs"].ttft_p99
    verdict = [
        f"Median TTFT: {'beats' if ttft_change <= -53 else 'short of'} the paper's -53% ({ttft_change:+.0f}%). "
        f"Capacity: {'matches or beats' if cap_change >= 26 else 'short of'} its +26% ({cap_change:+.0f}%).",
        f"The median gain is shortest-prompt-first admission, and it is paid in the tail: p99 TTFT {tail_x:.1f}x "
        "Sarathi's at equal load (the longest prompts wait behind every shorter arrival, up to starvation_s = 30 s).",
        "Our Sarathi-Serve baseline already runs this engine's stall-free, decode-first chunked schedule, so SLAI "
        "adds only its step sizing and prompt order; with the median-TTFT criterion on a finite trace both "
        "capacities sit slightly past steady state (served/offered < 1), where the median of SJF-ordered "
        "requests stays low while the queue grows.",
    ]
    return Result(
        "slai", "SLAI against Sarathi-Serve on ShareGPT (Mistral-7B on one RTX 6000 Ada, analytic)",
        anchor="SLAI (Bari, Hegde, de Veciana 2025), Mistral-7B on an RTX 6000 Ada, Openchat ShareGPT4: -53% median "
               "TTFT and +26% capacity (median TTFT < 0.5 s with tail TBT met) against Sarathi-Serve",
        ours=f"median TTFT {ttft_change:+.0f}% at equal load ({rate:.2f} req/s, Sarathi's capacity), capacity "
             f"{cap_change:+.0f}% ({caps['fcfs']:.2f} -> {caps['slo']:.2f} req/s)",
        verdict=" ".join(verdict),
        columns=list(rows[0]), rows=rows,
        settings={"cost_model": ADA_MISTRAL, "cost_source": cost.source[:120] + "...",
                  "workload": f"sharegpt, {n} requests, Poisson; every request ttft_ms={TTFT_SLO_S * 1e3:.0f}, "
                              f"tbt_ms={TBT_SLO_MS:.0f}",
                  "capacity": f"rates doubled from 2 req/s until one fails the targets, then {steps} bisections",
                  "targets": f"median TTFT < {TTFT_SLO_S} s and p99 TBT <= {TBT_SLO_MS:.0f} ms",
                  "bisection": trace},
        plot=lambda p: _slai_plot(p, trace, caps),
    )


def _slai_plot(path: Path, trace: list[dict[str, Any]], caps: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for policy, label in (("fcfs", "Sarathi-Serve"), ("slo", "SLAI")):
        pts = sorted((t["rate"], t["TTFT p50 s"]) for t in trace if t["policy"] == policy)
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{label} (capacity {caps[policy]:.2f}/s)")
        ax.axvline(caps[policy], color=line.get_color(), ls=":")
    ax.axhline(TTFT_SLO_S, color="grey", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (req/s)")
    ax.set_ylabel("median TTFT (s)")
    ax.set_title("ShareGPT, Mistral-7B on RTX 6000 Ada (analytic)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
