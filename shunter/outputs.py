"""What `LLM.generate` gives back, shaped like vLLM's: one `RequestOutput` per prompt, with one
`CompletionOutput` per sample (`SamplingParams.n`).

Log-probabilities are vLLM's shape too: per position a dict from token id to `Logprob`, holding
the token at that position first and then the top k (`SamplingParams.logprobs` /
`prompt_logprobs`); the prompt's list starts with None (nothing predicts the first token)."""
from __future__ import annotations

from dataclasses import dataclass

PositionLogprobs = dict[int, "Logprob"]


@dataclass
class Logprob:
    logprob: float
    rank: int  # 1: the most likely token at its position
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    """One generated sequence. `finish_reason` is "stop", "length", "abort" or "deadline".
    `logprobs` and `cumulative_logprob` (their sum over the tokens) are None unless asked for."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[PositionLogprobs] | None = None
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
    prompt_logprobs: list[PositionLogprobs | None] | None = None
