"""Run a plan's router requests and answer in OpenAI's shapes: one JSON body, or server-sent events.

A choice is one router request (`openai_request.Plan`); with several, their streams are merged
as tokens arrive, so a chunk names its choice by `index`. Leaving the merged stream (a client that
disconnects, an error in one choice) cancels every choice, and leaving the router's stream aborts
the request on its replica, which frees its KV blocks. A stream sends a chunk only when there is
new text or a finish: text the detokenizer holds back (half a character, a possible stop string)
costs no chunk, except with `continuous_usage_stats`, whose clients count tokens by the usage on
each chunk, or `return_token_ids` (completions), whose chunks carry the tokens: both get one for
every step that made a token, as do chunks whose tokens carry log-probabilities. Usage counts
each prompt once, whatever `n`, as OpenAI does. `choice_shape` adds the echoed prompt and the
log-probabilities to a choice's chunks.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Union

from shunter.router.http.choice_shape import ChoiceShape, joined
from shunter.router.http.errors import from_exception
from shunter.router.http.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionChoiceWithTokens,
    CompletionResponse,
    PromptTokensDetails,
    Usage,
)
from shunter.router.http.request import Choice, Plan
from shunter.router.core import Router
from shunter.router.http.text_stream import TextChunk, text_stream

if TYPE_CHECKING:
    from shunter.router.metrics import StreamMetrics

log = logging.getLogger(__name__)
DONE = b"data: [DONE]\n\n"
Event = tuple[Choice, TextChunk]


TimingFor = Callable[[Choice], "StreamMetrics | None"]


def _stream(router: Router, tokenizer: Any, choice: Choice, timing_for: TimingFor | None) -> AsyncIterator[TextChunk]:
    timing = timing_for(choice) if timing_for is not None else None
    return text_stream(router, tokenizer, choice.request_id, choice.prompt_token_ids, choice.params, timing)


async def choice_events(router: Router, tokenizer: Any, plan: Plan, timing_for: TimingFor | None = None
                        ) -> AsyncIterator[Event]:
    """Every choice's chunks, merged as they come; the first error ends it (and every choice).
    `timing_for` gives each choice's stream its metrics (None: not observed)."""
    if len(plan.choices) == 1:  # the common case, without a task and a queue in the way
        choice = plan.choices[0]
        async for chunk in _stream(router, tokenizer, choice, timing_for):
            yield choice, chunk
        return
    queue: asyncio.Queue[Union[Event, BaseException, None]] = asyncio.Queue()

    async def pump(choice: Choice) -> None:
        try:
            async for chunk in _stream(router, tokenizer, choice, timing_for):
                queue.put_nowait((choice, chunk))
        except Exception as e:
            queue.put_nowait(e)
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(c), name=f"choice {c.request_id}") for c in plan.choices]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Tally:
    """Usage as chunks arrive: completion tokens per choice, cached prompt tokens per prompt (the
    fewest any of its samples found: the share all of them were spared)."""

    plan: Plan
    completion: dict[int, int] = field(default_factory=dict)
    cached: dict[int, int] = field(default_factory=dict)

    def add(self, choice: Choice, chunk: TextChunk) -> None:
        self.completion[choice.index] = chunk.completion_tokens
        seen = self.cached.get(choice.prompt_index, chunk.num_cached_tokens)
        self.cached[choice.prompt_index] = min(seen, chunk.num_cached_tokens)

    def usage(self) -> Usage:
        prompt, completion = sum(self.plan.prompt_lengths), sum(self.completion.values())
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(self.cached.values())))


@dataclass
class Meta:
    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))


async def complete(events: AsyncIterator[Event], plan: Plan, meta: Meta, tokenizer: Any,
                   chat: bool, token_ids: bool = False) -> CompletionResponse | ChatCompletionResponse:
    """The whole answer as one body; `token_ids`: each completion choice also carries its tokens."""
    texts: dict[int, list[str]] = {c.index: [] for c in plan.choices}
    tokens: dict[int, list[int]] = {c.index: [] for c in plan.choices}
    finish: dict[int, str | None] = {c.index: None for c in plan.choices}
    shapes = {c.index: ChoiceShape(c, tokenizer, chat) for c in plan.choices}
    logprobs: dict[int, Any] = {c.index: None for c in plan.choices}
    tally = Tally(plan)
    async for choice, chunk in events:
        text, chunk_logprobs = shapes[choice.index].shape(chunk)
        texts[choice.index].append(text)
        logprobs[choice.index] = joined(logprobs[choice.index], chunk_logprobs)
        tokens[choice.index] += chunk.token_ids
        finish[choice.index] = chunk.finish_reason
        tally.add(choice, chunk)
    if chat:
        choices = [ChatChoice(index=i, message=AssistantMessage(content="".join(t)), logprobs=logprobs[i],
                              finish_reason=finish[i]) for i, t in texts.items()]
        return ChatCompletionResponse(id=meta.id, created=meta.created, model=meta.model, choices=choices,
                                      usage=tally.usage())
    choices = [CompletionChoiceWithTokens(index=i, text="".join(t), logprobs=logprobs[i], finish_reason=finish[i],
                                          token_ids=tokens[i])
               if token_ids else
               CompletionChoice(index=i, text="".join(t), logprobs=logprobs[i], finish_reason=finish[i])
               for i, t in texts.items()]
    return CompletionResponse(id=meta.id, created=meta.created, model=meta.model, choices=choices, usage=tally.usage())


def _sse(body: bytes) -> bytes:
    return b"data: " + body + b"\n\n"


class ChunkFormat:
    """Completions' chunks: {"object": "text_completion", "choices": [{"index", "text", ...}]};
    `token_ids`: each choice also carries the chunk's tokens. With either, or log-probabilities
    asked, every token gets its chunk (`every_token`)."""

    chat = False

    def __init__(self, meta: Meta, plan: Plan, tokenizer: Any, token_ids: bool = False) -> None:
        self.meta, self.token_ids = meta, token_ids
        self.shapes = {c.index: ChoiceShape(c, tokenizer, self.chat) for c in plan.choices}
        self.every_token = token_ids or any(c.params.logprobs is not None for c in plan.choices)

    def chunk(self, index: int, chunk: TextChunk, usage: Usage | None = None) -> bytes:
        m = self.meta
        text, logprobs = self.shapes[index].shape(chunk)
        finish = chunk.finish_reason
        choice = (CompletionChoiceWithTokens(index=index, text=text, logprobs=logprobs, finish_reason=finish,
                                             token_ids=chunk.token_ids)
                  if self.token_ids else
                  CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish))
        return _sse(CompletionResponse(id=m.id, created=m.created, model=m.model, choices=[choice], usage=usage)
                    .model_dump_json().encode())

    def usage(self, usage: Usage) -> bytes:
        m = self.meta
        return _sse(CompletionResponse(id=m.id, created=m.created, model=m.model, choices=[], usage=usage)
                    .model_dump_json().encode())


class ChatChunkFormat(ChunkFormat):
    """Chat's chunks: a `delta` per choice, with the assistant's role in each choice's first one."""

    chat = True

    def __init__(self, meta: Meta, plan: Plan, tokenizer: Any) -> None:
        super().__init__(meta, plan, tokenizer)
        self.started: set[int] = set()

    def chunk(self, index: int, chunk: TextChunk, usage: Usage | None = None) -> bytes:
        first = index not in self.started
        self.started.add(index)
        text, logprobs = self.shapes[index].shape(chunk)
        delta = ChatDelta(role="assistant" if first else None, content=text if text or first else None)
        m = self.meta
        return _sse(ChatCompletionChunk(id=m.id, created=m.created, model=m.model, usage=usage, choices=[
            ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=chunk.finish_reason)
        ]).model_dump_json().encode())

    def usage(self, usage: Usage) -> bytes:
        m = self.meta
        return _sse(ChatCompletionChunk(id=m.id, created=m.created, model=m.model, choices=[], usage=usage)
                    .model_dump_json().encode())


async def sse_body(first: Event, events: AsyncIterator[Event], fmt: ChunkFormat, plan: Plan,
                   include_usage: bool, continuous_usage: bool = False) -> AsyncIterator[bytes]:
    """The event stream after its first event (taken before the 200 went out, so that an error
    before any token still gets its status): chunks (each with the usage so far when
    `continuous_usage`), the usage chunk when asked, `[DONE]`. An error after the 200 is one
    `data: {"error": ...}` event, as OpenAI sends it."""
    tally = Tally(plan)
    every_token = continuous_usage or fmt.every_token  # these clients count tokens: a chunk per step that made one
    try:
        item: Event | None = first
        while item is not None:
            choice, chunk = item
            tally.add(choice, chunk)
            if chunk.text or chunk.finish_reason is not None or (every_token and chunk.num_tokens):
                yield fmt.chunk(choice.index, chunk, tally.usage() if continuous_usage else None)
            item = await anext(events, None)
    except Exception as e:
        error = from_exception(e)
        if error.status == 500:
            log.exception("stream %s failed", plan.id)
        yield _sse(error.body())
        yield DONE
        return
    finally:
        await events.aclose()
    if include_usage:
        yield fmt.usage(tally.usage())
    yield DONE
