"""Log-probabilities in the engine: prompt positions in the prefill, and the host's side of both kinds.

A sampled token's log-probabilities come from the sampler (`sampler.logprobs_of`, on the rows it
samples). A prompt's come from the same forward pass as its prefill: a chunk that computes
positions `[start, end)` has the hidden state of each, and position `q` predicts prompt token
`q + 1`, so the lm-head runs again on those rows only (`PromptSpan`), never a second pass over
the model. A chunked prompt gets its log-probabilities chunk by chunk; the request keeps them
(`Request.prompt_logprobs`) until its first output token carries them out. Prompt positions are
computed only while none have gone out (a recompute after that skips them), and such a request
takes no prefix-cache hit until then (`Request.needs_prompt_logprobs`): a position the cache
skipped would have none.

Both kinds reach the host with the step's tokens, in the same readback (`readback.py`): no sync
of their own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from shunter.logprobs import TokenLogprobs
from shunter.replica.request import Request
from shunter.replica.sampler import LogprobsTensors, logprobs_of
from shunter.replica.scheduler import ScheduledRequest

MAX_ROWS = 512  # prompt positions sent through the lm-head at once: bounds the [rows, vocab] logits


@dataclass(frozen=True, slots=True)
class PromptSpan:
    """Prompt positions `[start, start + count)` of `request`, at rows `[row, row + count)` of the step."""

    request: Request
    start: int
    count: int
    row: int


def prompt_spans(scheduled: list[ScheduledRequest]) -> list[PromptSpan]:
    """The prompt positions this step computes whose log-probabilities are asked for and not out yet."""
    spans, row = [], 0
    for s in scheduled:
        req = s.request
        if req.needs_prompt_logprobs:
            end = min(s.start + s.num_new_tokens, len(req.prompt_token_ids) - 1)  # the last position predicts an output
            if end > s.start:
                spans.append(PromptSpan(req, s.start, end - s.start, row))
        row += s.num_new_tokens
    return spans


@dataclass
class PromptLogprobs:
    """A step's prompt log-probabilities: per span, its rows of `values` in order."""

    spans: list[PromptSpan]
    values: LogprobsTensors


def compute_prompt_logprobs(spans: list[PromptSpan], hidden: torch.Tensor,
                            compute_logits: Callable[[torch.Tensor], torch.Tensor]) -> PromptLogprobs:
    """On the device, from the step's hidden states `[T, hidden]`: the lm-head on the spans' rows
    only, `MAX_ROWS` at a time."""
    rows = np.concatenate([np.arange(s.row, s.row + s.count) for s in spans])
    targets = np.concatenate([s.request.prompt_token_ids[s.start + 1: s.start + 1 + s.count] for s in spans])
    k = max(s.request.params.prompt_logprobs or 0 for s in spans)
    device = hidden.device
    rows_t = torch.from_numpy(rows).to(device, non_blocking=True)
    targets_t = torch.from_numpy(targets.astype(np.int64)).to(device, non_blocking=True)
    parts = [logprobs_of(compute_logits(hidden[rows_t[a: a + MAX_ROWS]]), targets_t[a: a + MAX_ROWS], k)
             for a in range(0, len(rows), MAX_ROWS)]
    if len(parts) == 1:
        return PromptLogprobs(spans, parts[0])
    return PromptLogprobs(spans, LogprobsTensors(*(torch.cat(ts) for ts in zip(*(p.tensors() for p in parts)))))


class HostLogprobs:
    """Log-probabilities read back to the host, as Python lists, one `TokenLogprobs` a row."""

    def __init__(self, values: LogprobsTensors) -> None:
        self.logprobs, self.ranks, self.top_ids, self.top_logprobs = (t.tolist() for t in values.tensors())

    def at(self, row: int, token_id: int, k: int) -> TokenLogprobs:
        return TokenLogprobs(token_id, self.logprobs[row], self.ranks[row], tuple(self.top_ids[row][:k]),
                             tuple(self.top_logprobs[row][:k]))


def store_prompt_logprobs(prompt: PromptLogprobs) -> None:
    """Write a step's prompt log-probabilities into their requests, also one that already counts
    as finished: a request whose token on the way is its last (`max_tokens=1`, as an evaluation's
    `echo` asks) ends before the step's readback, and its output still carries them. One
    preempted keeps them: they do not change."""
    host = HostLogprobs(prompt.values)
    row = 0
    for span in prompt.spans:
        req = span.request
        if req.prompt_logprobs is not None:
            ids, k = req.prompt_token_ids, req.params.prompt_logprobs or 0
            req.prompt_logprobs[span.start + 1: span.start + 1 + span.count] = [
                host.at(row + i, ids[span.start + 1 + i], k) for i in range(span.count)]
        row += span.count
