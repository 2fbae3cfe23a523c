"""What the load client measured: one record per request, and a run's summary.

Times are client-side wall time. TTFT runs from sending the request to receiving its first
token; an inter-token gap is the time between receiving two consecutive tokens, so tokens that
came in one message have gaps of 0 after the first (what a reader of the stream sees);
end-to-end runs from sending to the last message. A request meets its SLO when it finished
(stop or length), its TTFT is within its TTFT target and every one of its gaps within its TBT
target: the server's SLO-aware policy works to the same per-token deadline. Goodput is such
requests per second of the run, as vLLM's serving benchmark counts it (which checks the mean
time per output token instead of every gap).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from shunter.mathutil import percentile

FINISHED = ("stop", "length")
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(slots=True)
class RequestRecord:
    """One request of a run (seconds; offsets are from the run's start)."""

    request_id: str
    priority: str
    tenant: str
    conversation: str
    turn: int
    max_tokens: int
    ttft_slo_ms: float
    tbt_slo_ms: float
    due_s: float | None = None  # when it was due (open loop: its arrival; a later turn: also its think time)
    sent_s: float | None = None  # None: never sent (the run was stopped, or an earlier turn failed)
    prompt_len: int = 0  # as sent (a later turn: with the answers actually received)
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    e2e_s: float | None = None
    num_tokens: int = 0
    replicas: list[str] = field(default_factory=list)  # in order; more than one: it was moved
    cached_tokens: int = 0
    finish_reason: str = ""
    error: str = ""  # the status code (RESOURCE_EXHAUSTED, INVALID_ARGUMENT, ...) or "cancelled"

    @property
    def finished(self) -> bool:
        return not self.error and self.finish_reason in FINISHED

    @property
    def met_ttft(self) -> bool:
        return self.finished and self.ttft_s is not None and self.ttft_s * 1e3 <= self.ttft_slo_ms

    @property
    def met_tbt(self) -> bool:
        return self.finished and all(g * 1e3 <= self.tbt_slo_ms for g in self.itl_s)

    @property
    def good(self) -> bool:
        return self.met_ttft and self.met_tbt


@dataclass
class Dist:
    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, seconds: list[float]) -> Dist:
        """In milliseconds; zeros when empty."""
        ms = [s * 1e3 for s in seconds]
        return cls(sum(ms) / len(ms) if ms else 0.0, *(percentile(ms, q) for q in QUANTILES))


@dataclass
class Summary:
    """One run (one rate or concurrency) in numbers; latencies in ms, rates per second."""

    requests: int  # in the workload
    sent: int
    finished: int
    not_sent: int
    errors: dict[str, int]  # status code -> requests
    duration_s: float  # the run's start to its last response
    request_throughput: float  # finished requests / duration
    output_throughput: float  # tokens received / duration
    input_throughput: float  # prompt tokens of finished requests / duration
    ttft_ms: Dist
    tbt_ms: Dist  # over every gap of every finished request
    tpot_ms: Dist  # per finished request of 2+ tokens: (end-to-end - TTFT) / (tokens - 1), its decode speed
    e2e_ms: Dist
    goodput: float  # requests meeting both SLOs / duration
    slo_attainment: float  # of the requests sent, the share meeting both SLOs
    ttft_attainment: float
    tbt_attainment: float
    cached_token_share: float  # prompt tokens the server found cached / prompt tokens (finished requests)
    replicas: dict[str, int]  # finished requests by the replica that finished them
    max_send_lag_ms: float  # how late the client sent against the schedule (its own overload)
    moved: int  # finished requests that more than one replica served (migrated or failed over)
    worst_gap_moved_ms: float  # median over those of each one's largest gap between tokens (0: none moved)
    worst_gap_stayed_ms: float  # the same over the finished requests one replica served


def summarize(records: list[RequestRecord], duration_s: float) -> Summary:
    sent = [r for r in records if r.sent_s is not None]
    done = [r for r in sent if r.finished]
    per_s = (lambda n: n / duration_s) if duration_s > 0 else (lambda n: 0.0)
    share = (lambda n: n / len(sent)) if sent else (lambda n: 0.0)
    prompt = sum(r.prompt_len for r in done)
    lags = [r.sent_s - r.due_s for r in sent if r.due_s is not None]
    good = sum(r.good for r in sent)
    moved = [r for r in done if len(set(r.replicas)) > 1]
    stayed = [r for r in done if len(set(r.replicas)) == 1]
    return Summary(
        requests=len(records), sent=len(sent), finished=len(done), not_sent=len(records) - len(sent),
        errors=dict(Counter(r.error or f"finish:{r.finish_reason or 'none'}" for r in sent if not r.finished)),
        duration_s=duration_s, request_throughput=per_s(len(done)),
        output_throughput=per_s(sum(r.num_tokens for r in sent)), input_throughput=per_s(prompt),
        ttft_ms=Dist.of([r.ttft_s for r in done if r.ttft_s is not None]),
        tbt_ms=Dist.of([g for r in done for g in r.itl_s]),
        tpot_ms=Dist.of([(r.e2e_s - r.ttft_s) / (r.num_tokens - 1) for r in done
                         if r.num_tokens > 1 and r.e2e_s is not None and r.ttft_s is not None]),
        e2e_ms=Dist.of([r.e2e_s for r in done if r.e2e_s is not None]),
        goodput=per_s(good), slo_attainment=share(good), ttft_attainment=share(sum(r.met_ttft for r in sent)),
        tbt_attainment=share(sum(r.met_tbt for r in sent)),
        cached_token_share=sum(r.cached_tokens for r in done) / prompt if prompt else 0.0,
        replicas=dict(Counter(r.replicas[-1] for r in done if r.replicas)),
        max_send_lag_ms=max(lags, default=0.0) * 1e3,
        moved=len(moved), worst_gap_moved_ms=_median_worst_gap(moved), worst_gap_stayed_ms=_median_worst_gap(stayed),
    )


def _median_worst_gap(records: list[RequestRecord]) -> float:
    """The median over `records` of each one's largest gap between two tokens, in ms."""
    worst = [max(r.itl_s) * 1e3 for r in records if r.itl_s]
    return percentile(worst, 0.5) if worst else 0.0
