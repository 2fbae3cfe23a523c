"""Request-level metrics, measured where the stream is served (the frontend): what users see.

Names, meanings and buckets follow vLLM's (`vllm:` becomes `shunter:`), so dashboards and
autoscalers written for vLLM read them unchanged. A request's clock starts when its `Generate`
call reaches the frontend (before tokenization); its first token and its end are stamped as
their chunks are handed to gRPC. Inter-token latency is observed once per chunk that carries
tokens after the first: tokens that reach the client together (the frontend caught up with
several engine steps, or a migration replayed some) are one observation, as vLLM observes one
per engine step. A request the client leaves before it ends finishes as `abort`.

Per chunk the stream pays one histogram observation and one counter increment (a short bucket
scan and two locked adds): nothing here grows with the request.
"""
from __future__ import annotations

import time
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Histogram

from shunter.replica.engine_protocol import FinishReason

FINISH_REASONS = get_args(FinishReason)  # stop, length, abort, deadline
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
# vLLM's, with three below its first (10 ms): a decode step here is often shorter.
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
               960.0, 1920.0, 7680.0)


def buckets_1_2_5(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to `max_value` (token-count buckets, as vLLM builds them)."""
    out, scale = [], 1
    while True:
        for m in (1, 2, 5):
            if m * scale > max_value:
                return out
            out.append(m * scale)
        scale *= 10


class RequestMetrics:
    """The frontend's request histograms and counters, in `registry`, labelled with the model."""

    def __init__(self, registry: CollectorRegistry, model: str, max_model_len: int) -> None:
        labels, tokens = ["model_name"], buckets_1_2_5(max_model_len)

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry).labels(model)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=registry).labels(model)

        self.ttft = histogram("shunter:time_to_first_token_seconds", "Time to first token in seconds.", TTFT_BUCKETS)
        self.itl = histogram("shunter:inter_token_latency_seconds",
                             "Time between two chunks of tokens of one stream, in seconds.", ITL_BUCKETS)
        self.e2e = histogram("shunter:e2e_request_latency_seconds", "End-to-end request latency in seconds.",
                             E2E_BUCKETS)
        self.prompt_len = histogram("shunter:request_prompt_tokens", "Prompt tokens of finished requests.", tokens)
        self.output_len = histogram("shunter:request_generation_tokens", "Generated tokens of finished requests.",
                                    tokens)
        self.prompt_tokens = counter("shunter:prompt_tokens", "Prompt tokens of requests that made a first token.")
        self.generation_tokens = counter("shunter:generation_tokens", "Tokens streamed to clients.")
        self._model = model
        self._success = Counter("shunter:request_success", "Finished requests, by finish reason.",
                                labels + ["finished_reason"], registry=registry)
        self._finished = {reason: self._success.labels(model, reason) for reason in FINISH_REASONS}

    def finished(self, reason: str) -> Counter:
        """The counter of `reason` (the engine contract's reasons exist from the start, at 0)."""
        counter = self._finished.get(reason)
        return counter if counter is not None else self._success.labels(self._model, reason)

    def stream(self, start: float, num_prompt_tokens: int) -> StreamMetrics:
        """The metrics of one stream that arrived at `start` (`time.perf_counter()`)."""
        return StreamMetrics(self, start, num_prompt_tokens)


class StreamMetrics:
    __slots__ = ("_last", "_m", "_prompt", "_start", "_tokens", "done")

    def __init__(self, metrics: RequestMetrics, start: float, num_prompt_tokens: int) -> None:
        self._m, self._start, self._prompt = metrics, start, num_prompt_tokens
        self._last: float | None = None
        self._tokens = 0
        self.done = False

    def sent(self, num_tokens: int) -> None:
        """A chunk of `num_tokens` (> 0) tokens goes to the client now."""
        now = time.perf_counter()
        if self._last is None:
            self._m.ttft.observe(now - self._start)
            self._m.prompt_tokens.inc(self._prompt)
        else:
            self._m.itl.observe(now - self._last)
        self._last = now
        self._tokens += num_tokens
        self._m.generation_tokens.inc(num_tokens)

    def finished(self, reason: str) -> None:
        """The stream ended (its last chunk goes now, or the client left: `abort`)."""
        self.done = True
        m = self._m
        m.e2e.observe(time.perf_counter() - self._start)
        m.prompt_len.observe(self._prompt)
        m.output_len.observe(self._tokens)
        m.finished(reason).inc()
