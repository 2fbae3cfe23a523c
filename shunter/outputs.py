"""What `LLM.generate` gives back, shaped like vLLM's: one `RequestOutput` per prompt, with one
`CompletionOutput` per sample (`SamplingParams.n`)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CompletionOutput:
    """One generated sequence. `finish_reason` is "stop", "length", "abort" or "deadline"."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None  # not computed yet: always None
    finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None  # None when the prompt was given as token ids
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    metrics: RequestMetrics | None = None
