"""One request's state inside a replica.

`num_computed_tokens` chases `num_tokens`: a fresh prompt is behind by its length (prefill,
possibly chunked), a prefix-cache hit starts it ahead, a decode is one token behind, a
preempted-by-recompute request falls back to zero. Everything the scheduler does is moving it.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from shunter.logprobs import TokenLogprobs
from shunter.sampling_params import SamplingParams

# An output token a step has sampled on the device but the host has not read back yet. Under
# async scheduling the next step is scheduled before that: the placeholder keeps `num_tokens`
# what it will be, and the model runner takes the real token from the device.
PLACEHOLDER = -1


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"
    # Seated with its blocks, waiting for copies of its prefix from the CPU tier to land
    # (`Scheduler.loading`); computes nothing until they do, or until they time out.
    LOADING = "loading"
    FINISHED = "finished"


@dataclass(eq=False, slots=True)  # slots: every step reads each running request's fields, one object and no dict
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    eos_token_ids: tuple[int, ...] = ()
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: str | None = None
    # Prompt tokens found in the prefix cache when the request was first scheduled.
    num_cached_tokens: int = -1
    num_preemptions: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    # Free-form per-request memory of the scheduling policy (quantum used, level, aging...).
    policy_state: dict = field(default_factory=dict)
    # When the policy last gave it budget (`SchedulingPolicy.waited`; None: never): stamped
    # every step for every scheduled request, so a field of its own, not `policy_state`'s.
    last_service: float | None = None
    # A request that asks for log-probabilities keeps them (`replica/logprobs.py`): one per output
    # token, and one per prompt position (None at the first, which nothing predicts); the prompt's
    # go out with output token 0.
    output_logprobs: list[TokenLogprobs] | None = None
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    # A request with `params.structured_output`: its matcher (`replica/grammar.py`), which has
    # consumed every output token so far.
    grammar: Any = None
    # The blocks it is expected to hold at its end (`load_estimate.expected_blocks`), which the
    # load report reads every step; worked out once (-1: not yet), as its prompt and params never change.
    expected_blocks: int = -1
    # The tokens that end it when sampled: its stop ids, and EOS unless `ignore_eos` (checked for
    # every token: one set lookup).
    stop_ids: frozenset[int] = field(init=False, repr=False)
    # The prompt never changes: its length is read by every step's loops without a `len` call.
    num_prompt_tokens: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        eos = () if self.params.ignore_eos else self.eos_token_ids
        self.stop_ids = frozenset(self.params.stop_token_ids).union(eos)
        self.num_prompt_tokens = len(self.prompt_token_ids)
        if self.params.logprobs is not None and self.output_logprobs is None:
            self.output_logprobs = []
        if self.params.prompt_logprobs is not None and self.prompt_logprobs is None:
            self.prompt_logprobs = [None] * len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """Tokens `[start, end)` of prompt + output without building the whole list."""
        p = self.num_prompt_tokens
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:
            return self.output_token_ids[start - p : end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - p]

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Its prompt's log-probabilities are asked for and not out yet: its prefill computes them
        (and may not skip a position through the prefix cache)."""
        return self.prompt_logprobs is not None and not self.output_token_ids

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    @property
    def is_prefilling(self) -> bool:
        """Still computing prompt (or recomputing after preemption): more than one token behind."""
        return self.num_tokens - self.num_computed_tokens > 1

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, {self.status.value}, prompt={self.num_prompt_tokens}, "
            f"out={self.num_output_tokens}, computed={self.num_computed_tokens})"
        )
