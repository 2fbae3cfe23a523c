"""Small arithmetic every layer shares: ceiling division and percentiles."""
from __future__ import annotations

import statistics
from typing import Sequence


def cdiv(a: int, b: int) -> int:
    """Ceiling of a / b for integers (blocks needed for `a` tokens of `b` per block)."""
    return -(-a // b)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of `values`, interpolated between closest ranks; 0.0 if empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    if not values:
        return 0.0
    if len(values) == 1 or q == 0.0:
        return float(min(values))
    if q == 1.0:
        return float(max(values))
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]
