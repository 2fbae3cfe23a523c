"""Predicting how many tokens a request will still produce, learned from finished requests.

SJF ranks by predicted remaining work and admission reserves KV for the predicted footprint, so
both need a guess before the request ends. A client hint (`expected_output_tokens`) wins; else a
quantile of recent output lengths among finished requests with a similar prompt length (one
bucket per power of two), else of all recent requests, else `max_tokens` (the only bound known).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from shunter.mathutil import percentile
from shunter.replica.request import Request


def _bucket(num_prompt_tokens: int) -> int:
    return max(num_prompt_tokens, 1).bit_length()


def _quantile(values: deque[int], q: float) -> int:
    return round(percentile(values, q))


@dataclass
class OutputLengthEstimator:
    quantile: float = 0.5
    window: int = 256  # recent finished requests remembered per bucket
    min_samples: int = 4  # below this a bucket defers to the global window
    buckets: dict[int, deque[int]] = field(default_factory=dict)
    recent: deque[int] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if not 0.0 <= self.quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {self.quantile}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        self.recent = deque(self.recent, maxlen=self.window)

    def observe(self, request: Request) -> None:
        """Learn from a request that ended on its own (stop or length), not one cut short."""
        if request.finish_reason not in ("stop", "length"):
            return
        bucket = self.buckets.setdefault(_bucket(request.num_prompt_tokens), deque(maxlen=self.window))
        bucket.append(request.num_output_tokens)
        self.recent.append(request.num_output_tokens)

    def predict(self, request: Request) -> int:
        """Total output tokens expected for `request` (never above its `max_tokens`)."""
        params = request.params
        if params.expected_output_tokens is not None:
            return min(params.expected_output_tokens, params.max_tokens)
        bucket = self.buckets.get(_bucket(request.num_prompt_tokens))
        if bucket is not None and len(bucket) >= self.min_samples:
            return min(_quantile(bucket, self.quantile), params.max_tokens)
        if len(self.recent) >= self.min_samples:
            return min(_quantile(self.recent, self.quantile), params.max_tokens)
        return params.max_tokens

    def remaining(self, request: Request) -> int:
        """Output tokens still expected; at least one while the request lives."""
        return max(self.predict(request) - request.num_output_tokens, 1)
