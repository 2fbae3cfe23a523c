"""The load client's figure: latency CDFs per run, then latency, goodput and SLO attainment
against the swept rate (or concurrency), one PNG."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from shunter.loadtest.load_metrics import RequestRecord, Summary


def _cdf(ax: Any, values_ms: list[float], label: str) -> None:
    values = sorted(values_ms)
    if values:
        ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=label)


def _finite(values: list[float]) -> list[float]:
    """inf (all requests at once) as a gap in the line."""
    return [v if math.isfinite(v) else float("nan") for v in values]


def _finish(ax: Any) -> None:
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def plot(runs: list[tuple[str, float, Summary, list[RequestRecord]]], x_label: str, path: Path,
         offered: list[float] | None = None) -> None:
    """`runs`: (label, x, summary, records) per run, x the rate or concurrency; `offered`: the
    request rate each open-loop run's schedule really offered (a seeded draw of a few dozen
    arrivals is off the asked rate), drawn against throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for label, _, _, records in runs:
        done = [r for r in records if r.finished]
        _cdf(axes[0][0], [r.ttft_s * 1e3 for r in done if r.ttft_s is not None], label)
        _cdf(axes[0][1], [g * 1e3 for r in done for g in r.itl_s], label)
        _cdf(axes[0][2], [r.e2e_s * 1e3 for r in done if r.e2e_s is not None], label)
    for ax, name in zip(axes[0], ("TTFT", "inter-token gap", "end-to-end latency")):
        ax.set(xlabel=f"{name} (ms)", ylabel="share of requests" if name != "inter-token gap" else "share of gaps",
               title=f"{name} CDF")
        _finish(ax)
    xs = _finite([x for _, x, _, _ in runs])
    summaries = [s for _, _, s, _ in runs]
    lat = axes[1][0]
    for name, values in (("TTFT p50", [s.ttft_ms.p50 for s in summaries]), ("TTFT p99", [s.ttft_ms.p99 for s in summaries]),
                         ("gap p99", [s.tbt_ms.p99 for s in summaries]), ("e2e p50", [s.e2e_ms.p50 for s in summaries])):
        lat.plot(xs, values, marker="o", label=name)
    lat.set(xlabel=x_label, ylabel="ms", title="latency")
    if any(v > 0 for line in lat.get_lines() for v in line.get_ydata()):
        lat.set_yscale("log")
        lat.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    put = axes[1][1]
    if offered:
        put.plot(xs, _finite(offered), linestyle=":", marker=".", color="gray", label="offered (the schedule drawn)")
    put.plot(xs, [s.request_throughput for s in summaries], marker="o", label="throughput (finished req/s)")
    put.plot(xs, [s.goodput for s in summaries], marker="s", label="goodput (req/s meeting both SLOs)")
    put.set(xlabel=x_label, ylabel="requests/s", title="throughput and goodput")
    slo = axes[1][2]
    for name, values in (("TTFT and TBT", [s.slo_attainment for s in summaries]),
                         ("TTFT", [s.ttft_attainment for s in summaries]), ("TBT", [s.tbt_attainment for s in summaries])):
        slo.plot(xs, [v * 100 for v in values], marker="o", label=name)
    slo.set(xlabel=x_label, ylabel="% of requests sent", title="SLO attainment", ylim=(-5, 105))
    for ax in axes[1]:
        _finish(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
