"""What a simulated run measured, per request and in summary.

Times are virtual seconds. TTFT is arrival to first token, end-to-end is arrival to last token,
TBT is the gap between two consecutive tokens of one request (all gaps of all requests, as
Sarathi-Serve counts it); TPOT is one request's decode time per token, first token to last over
the tokens after the first (vLLM's and the P/D papers' measure), one value per request. TBT gaps
are counted in a histogram of log-spaced bins (0.5% wide),
so a run of millions of tokens keeps no list of them; its percentiles are exact to a bin.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    tenant: str
    priority: str
    arrival: float
    prompt_len: int
    output_len: int
    replica_id: str = ""
    first_token: float | None = None
    last_token: float | None = None
    finish: float | None = None
    num_tokens: int = 0
    num_cached_tokens: int = 0
    num_migrations: int = 0

    @property
    def ttft(self) -> float:
        return (self.first_token if self.first_token is not None else math.inf) - self.arrival

    @property
    def e2e(self) -> float:
        return (self.finish if self.finish is not None else math.inf) - self.arrival


class GapHistogram:
    """Counts of positive durations in log-spaced bins from `low` to `high` seconds."""

    def __init__(self, low: float = 1e-5, high: float = 1e4, growth: float = 1.005) -> None:
        self.low, self.log_growth = low, math.log(growth)
        self.counts = [0] * (int(math.log(high / low) / self.log_growth) + 2)
        self.total = 0
        self._last = (math.nan, 0)  # (gap, its bin): the decodes of one step share their gap

    def add(self, seconds: float) -> None:
        last, i = self._last
        if seconds != last:
            i = int(math.log(seconds / self.low) / self.log_growth) + 1 if seconds > self.low else 0
            i = min(i, len(self.counts) - 1)
            self._last = (seconds, i)
        self.counts[i] += 1
        self.total += 1

    def quantile(self, q: float) -> float:
        """The upper edge of the bin holding the q-quantile (0 when empty)."""
        if not self.total:
            return 0.0
        rank, seen = q * self.total, 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return self.low * math.exp(self.log_growth * i)
        return self.low * math.exp(self.log_growth * (len(self.counts) - 1))

    def fraction_above(self, seconds: float) -> float:
        if not self.total:
            return 0.0
        cut = int(math.log(seconds / self.low) / self.log_growth) + 1
        return sum(self.counts[cut + 1:]) / self.total


@dataclass
class Summary:
    """One run in numbers (seconds unless named otherwise)."""

    num_requests: int
    num_finished: int
    duration_s: float  # first arrival to last token
    output_tokens: int
    throughput_tok_s: float  # output tokens / duration
    request_rate: float  # finished requests / duration
    ttft_mean: float
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    e2e_mean: float
    e2e_p50: float
    e2e_p90: float
    e2e_p99: float
    tbt_p50: float
    tbt_p99: float
    tbt_p999: float
    tbt_max: float
    prefix_hit_rate: float  # prompt tokens served from cache / prompt tokens
    preemptions: int = 0
    swaps: int = 0
    recomputed_tokens: int = 0
    migrations: int = 0
    tpot_p50: float = math.nan
    tpot_p99: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q * 100)) if len(values) else math.nan


def summarize(records: list[RequestRecord], tbt: GapHistogram, **counters: Any) -> Summary:
    """The run's summary; `counters` (preemptions, swaps, ...) are copied in, unknown ones to `extra`."""
    done = [r for r in records if r.finish is not None]
    ttft = np.array([r.ttft for r in done])
    e2e = np.array([r.e2e for r in done])
    tokens = sum(r.num_tokens for r in records)
    start = min((r.arrival for r in records), default=0.0)
    end = max((r.last_token for r in records if r.last_token is not None), default=start)
    duration = end - start
    prompt = sum(r.prompt_len for r in done)
    tpot = np.array([(r.last_token - r.first_token) / (r.num_tokens - 1) for r in done if r.num_tokens > 1])
    known = {f for f in Summary.__dataclass_fields__}
    return Summary(
        num_requests=len(records), num_finished=len(done), duration_s=duration, output_tokens=tokens,
        throughput_tok_s=tokens / duration if duration > 0 else math.nan,
        request_rate=len(done) / duration if duration > 0 else math.nan,
        ttft_mean=float(ttft.mean()) if len(ttft) else math.nan, ttft_p50=_pct(ttft, 0.5), ttft_p90=_pct(ttft, 0.9),
        ttft_p99=_pct(ttft, 0.99), e2e_mean=float(e2e.mean()) if len(e2e) else math.nan, e2e_p50=_pct(e2e, 0.5),
        e2e_p90=_pct(e2e, 0.9), e2e_p99=_pct(e2e, 0.99), tbt_p50=tbt.quantile(0.5), tbt_p99=tbt.quantile(0.99),
        tbt_p999=tbt.quantile(0.999), tbt_max=tbt.quantile(1.0),
        prefix_hit_rate=sum(r.num_cached_tokens for r in done) / prompt if prompt else 0.0,
        tpot_p50=_pct(tpot, 0.5), tpot_p99=_pct(tpot, 0.99),
        **{k: v for k, v in counters.items() if k in known},
        extra={k: v for k, v in counters.items() if k not in known},
    )
