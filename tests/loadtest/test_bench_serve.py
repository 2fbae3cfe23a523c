"""The load client (`shunter bench serve`) against the fake model behind a real gRPC server on loopback."""
from __future__ import annotations

import pytest

from shunter.loadtest.load_metrics import RequestRecord, summarize


def _record(ttft_s=0.1, itl_s=(0.01, 0.02), finish="length", error="", sent=True) -> RequestRecord:
    return RequestRecord("r", "interactive", "", "", 0, 3, ttft_slo_ms=200.0, tbt_slo_ms=50.0,
                         sent_s=0.0 if sent else None, ttft_s=ttft_s, itl_s=list(itl_s), e2e_s=0.5,
                         num_tokens=len(itl_s) + 1, finish_reason=finish, error=error)


def test_goodput_counts_exactly_the_requests_meeting_both_slos():
    records = [
        _record(),  # good
        _record(ttft_s=0.2, itl_s=(0.05, 0.05)),  # good: targets are inclusive
        _record(ttft_s=0.3),  # TTFT missed
        _record(itl_s=(0.01, 0.06)),  # one gap missed
        _record(ttft_s=None, itl_s=(), finish="", error="RESOURCE_EXHAUSTED"),
        _record(finish="abort"),  # fast, but did not finish
        _record(sent=False),
    ]
    s = summarize(records, duration_s=2.0)
    assert (s.sent, s.finished, s.not_sent) == (6, 4, 1)
    assert s.errors == {"RESOURCE_EXHAUSTED": 1, "finish:abort": 1}
    assert s.goodput == 1.0 and s.request_throughput == 2.0
    assert s.slo_attainment == pytest.approx(2 / 6)
    assert (s.ttft_attainment, s.tbt_attainment) == (pytest.approx(3 / 6), pytest.approx(3 / 6))
