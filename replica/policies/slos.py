"""Per-request latency targets: the request's own `ttft_ms` / `tbt_ms`, else its class default.

Interactive users watch tokens stream, so their targets are tight; batch jobs only need to
finish. The defaults are settings of the policies that read them (`slo_defaults`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shunter.replica.request import Request


@dataclass(frozen=True)
class SLO:
    ttft_ms: float
    tbt_ms: float


DEFAULT_SLOS: dict[str, SLO] = {
    "interactive": SLO(ttft_ms=2_000.0, tbt_ms=250.0),
    "batch": SLO(ttft_ms=30_000.0, tbt_ms=2_000.0),
}


def parse_slo_defaults(value: dict[str, Any] | None) -> dict[str, SLO]:
    """Merge user overrides ({"interactive": {"tbt_ms": 100}} or SLO objects) into the defaults."""
    merged = dict(DEFAULT_SLOS)
    for cls, slo in (value or {}).items():
        if cls not in merged:
            raise ValueError(f"slo_defaults: unknown priority class {cls!r} (want one of {sorted(merged)})")
        base = merged[cls]
        fields = slo.__dict__ if isinstance(slo, SLO) else dict(slo)
        merged[cls] = SLO(float(fields.get("ttft_ms", base.ttft_ms)), float(fields.get("tbt_ms", base.tbt_ms)))
        if merged[cls].ttft_ms <= 0 or merged[cls].tbt_ms <= 0:
            raise ValueError(f"slo_defaults[{cls!r}]: targets must be > 0")
    return merged


def slo_of(request: Request, defaults: dict[str, SLO] = DEFAULT_SLOS) -> SLO:
    base = defaults[request.params.priority]
    p = request.params
    return SLO(p.ttft_ms if p.ttft_ms is not None else base.ttft_ms, p.tbt_ms if p.tbt_ms is not None else base.tbt_ms)
