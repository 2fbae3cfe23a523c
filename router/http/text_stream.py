"""One request's stream as text: the router's token deltas, detokenized and cut at stop strings.

Both front doors cut a stream the same way (`shunter.replica.detokenizer.detokenize`: the gRPC
frontend sends the tokens and their text, the HTTP gateway the text): text is released only when
it no longer ends inside a multi-byte character, and the stream ends at the token that completes a
stop string (leaving the router's stream there aborts the request). `text_stream` is the HTTP
side's whole loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator

from shunter.logprobs import TokenLogprobs
from shunter.replica.detokenizer import IncrementalDetokenizer, detokenize
from shunter.router.core import Router
from shunter.sampling_params import SamplingParams

if TYPE_CHECKING:
    from shunter.router.metrics import StreamMetrics


@dataclass
class TextChunk:
    """New text of one request; the last chunk has `finish_reason`. Counts are running totals."""

    text: str
    token_ids: list[int]  # the tokens this chunk carries (their text may be held back)
    finish_reason: str | None
    completion_tokens: int
    num_cached_tokens: int
    logprobs: list[TokenLogprobs] | None = None  # of `token_ids`, when the request asks
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # in the first chunk, when asked

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


async def text_stream(router: Router, tokenizer: Any, request_id: str, prompt_token_ids: list[int],
                      params: SamplingParams, timing: StreamMetrics | None = None) -> AsyncIterator[TextChunk]:
    """Stream `request_id` through `router`; errors (Overloaded, ReplicaUnavailable, ValueError) pass through.
    With `timing`, the chunks are observed as the gRPC servicer observes its own (TTFT, gaps, e2e)."""
    detok = IncrementalDetokenizer(tokenizer, list(params.stop)) if tokenizer is not None else None
    completion = 0
    try:
        async for delta in router.generate(request_id, prompt_token_ids, params):
            tokens, text, finish = detokenize(detok, delta.token_ids, delta.finish_reason)
            completion += len(tokens)
            if timing is not None:
                if tokens:
                    timing.sent(len(tokens))
                if finish is not None:
                    timing.finished(finish)
            logprobs = None if delta.logprobs is None else delta.logprobs[:len(tokens)]
            yield TextChunk(text, tokens, finish, completion, delta.num_cached_tokens, logprobs, delta.prompt_logprobs)
            if finish is not None:
                return
    finally:
        if timing is not None and not timing.done:  # the client left, or the request failed
            timing.finished("abort")
