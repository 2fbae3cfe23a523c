"""Resuming a stream: a client that lost it reconnects with the same `request_id` and
`resume_from`, the number of tokens it received, through this frontend or any other.

What happens depends on what the journal holds:

- the request is live here: the new stream takes the entry over (the old one, if its client is
  still reading, ends with ABORTED) and first replays what was sent past `resume_from`;
- it finished, and the journal holds all of it: the rest is replayed from the journal;
- it ended early (its client left, its frontend died or handed it over): it is adopted, journaled
  as live here and placed again as prompt + tokens sent for the tokens still owed, as failover
  does; a copy still running on a replica is aborted first. Live on another frontend that
  answers, that frontend hands it over first (`StateStore.claim`).

A shared journal is written after the tokens are streamed (batched, off the token path), so the
record of a frontend that died may lack its last few tokens. A client may then have received
more than the record holds: the request is adopted from the record's end and the frontend drops
the regenerated tokens the client already has. They are the same tokens when decoding is greedy
(exact resume); a sampled request continues validly but may differ from the tokens it lost.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncGenerator, AsyncIterator, Sequence

from shunter.errors import InvalidArgument, ReplicaUnavailable, RequestNotFound, Superseded
from shunter.router.core.state_store import FINISHED, Delta, JournalEntry, JournalRecord, resubmitted
from shunter.sampling_params import SamplingParams

if TYPE_CHECKING:
    from shunter.router.core.router import Router


@dataclass
class Stream:
    """What the frontend serves: a new request's stream, or one picked up again. `deltas` yields
    the tokens from position `start` on; the client has `resume_from` tokens already, of which
    `received` (the first `start`) are known here."""

    request_id: str
    num_prompt_tokens: int
    params: SamplingParams
    resume_from: int
    start: int
    received: list[int]
    deltas: AsyncIterator[Delta]


async def resume_stream(router: Router, request_id: str, resume_from: int) -> Stream:
    """Find the request and decide how it continues. RequestNotFound when nothing holds it,
    InvalidArgument when `resume_from` is beyond what it made, ReplicaUnavailable when it
    cannot be taken from where it is now."""
    if not request_id:
        raise InvalidArgument("request_id: required with resume_from")
    entry = router.journal.get(request_id)
    if entry is not None and not (entry.finished and entry.finish_reason is None):
        _check(request_id, resume_from, len(entry.sent))
        return Stream(request_id, len(entry.prompt_token_ids), entry.params, resume_from, resume_from,
                       entry.sent[:resume_from], _take_over(router, entry, resume_from))
    if entry is not None:  # it failed a moment ago and its stream is still ending
        raise ReplicaUnavailable(f"request {request_id!r} is ending; resume it again")
    record = await router.journal.lookup(request_id)
    if record is None:
        raise RequestNotFound(f"request_id {request_id!r}: no such request (unknown, or its journal expired)")
    record = await router.journal.claim(record)
    tokens, params = list(record.tokens), record.params
    if record.state == FINISHED or len(tokens) >= params.max_tokens:
        _check(request_id, resume_from, len(tokens))
        return Stream(request_id, len(record.prompt_token_ids), params, resume_from, resume_from,
                       tokens[:resume_from], _replay(record, tokens[resume_from:]))
    _check(request_id, resume_from, params.max_tokens)  # past the record's end: regenerated, see above
    start = min(resume_from, len(tokens))
    return Stream(request_id, len(record.prompt_token_ids), params, resume_from, start, tokens[:start],
                   _adopt(router, record, tokens, start))


def _check(request_id: str, resume_from: int, limit: int) -> None:
    if resume_from > limit:
        raise InvalidArgument(f"resume_from: {resume_from} is beyond the {limit} tokens request {request_id!r} made")


async def _take_over(router: Router, entry: JournalEntry, start: int) -> AsyncGenerator[Delta, None]:
    """Become the entry's stream: the old stream's queue gets `Superseded`; this one starts with
    what was sent past `start` (and the finish, if it came already). It takes no admission slot:
    the request was admitted already, and the old stream gives its slot back as it ends."""
    old, entry.queue = entry.queue, asyncio.Queue()
    old.put_nowait(Superseded(f"request {entry.request_id!r} was resumed on another stream"))
    finish = entry.finish_reason if entry.finished else None
    if len(entry.sent) > start or finish is not None:
        entry.queue.put_nowait(Delta(entry.sent[start:], finish, entry.num_cached_tokens, entry.replica_id or "",
                                     *_logprobs_from(entry.logprobs, entry.prompt_logprobs, start)))
    deltas = router.stream(entry)
    try:
        async for delta in deltas:
            yield delta
    finally:
        await deltas.aclose()


async def _replay(record: JournalRecord, rest: list[int]) -> AsyncGenerator[Delta, None]:
    reason = record.finish_reason or "length"
    yield Delta(rest, reason, record.num_cached_tokens, record.replica_id or "",
                *_logprobs_from(record.logprobs, record.prompt_logprobs, len(record.tokens) - len(rest)))


async def _adopt(router: Router, record: JournalRecord, tokens: list[int], start: int) -> AsyncGenerator[Delta, None]:
    """Journal it as live here and place it again as prompt + tokens sent, for the tokens owed."""
    taken_at = await router.admit()
    prompt = list(record.prompt_token_ids)
    entry = JournalEntry(record.request_id, prompt, record.params, sent=tokens, offset=len(tokens),
                         num_cached_tokens=record.num_cached_tokens,
                         logprobs=None if record.logprobs is None else list(record.logprobs),
                         prompt_logprobs=None if record.prompt_logprobs is None else list(record.prompt_logprobs))
    if record.logprobs is None:  # a journal that keeps none (Redis's): its tokens have none, new ones do
        entry.logprobs = None
    try:
        router.journal.add(entry)
    except BaseException:
        router.admission.release(taken_at)
        raise
    if len(tokens) > start:
        entry.queue.put_nowait(Delta(tokens[start:], None, entry.num_cached_tokens, record.replica_id or "",
                                     *_logprobs_from(entry.logprobs, entry.prompt_logprobs, start)))

    async def place() -> None:
        old = router.slots.get(record.replica_id or "")
        if old is not None and old.healthy:  # a copy may still run there (its frontend died)
            await router._quiet_abort(old, record.request_id)
        await router._place(entry, prompt + tokens, resubmitted(record.params, len(tokens)))

    deltas = router.stream(entry, place)
    try:
        async for delta in deltas:
            yield delta
    finally:
        await deltas.aclose()
        router.admission.release(taken_at)


def _logprobs_from(logprobs: Sequence | None, prompt_logprobs: Sequence | None,
                   start: int) -> tuple[list | None, list | None]:
    """What a replay from token `start` carries: the log-probabilities of its tokens, and the
    prompt's when it starts at the first."""
    return (None if logprobs is None else list(logprobs[start:]),
            None if prompt_logprobs is None or start > 0 else list(prompt_logprobs))


def release(router: Router, request_id: str) -> bool:
    """Another frontend resumes this request: stop streaming it here (its client, if still
    reading, gets ABORTED), abort it on its replica and journal where it ended. False if it
    is not live here."""
    entry = router.journal.get(request_id)
    if entry is None:
        return False
    _end(router, entry)
    entry.queue.put_nowait(Superseded(f"request {request_id!r} was resumed through another frontend"))
    return True


def stopped(router: Router, request_id: str, num_tokens: int) -> None:
    """The frontend ended the stream at a stop string after `num_tokens` tokens (the replica does
    not know stop strings): the journal keeps it as finished there, and the replica stops."""
    entry = router.journal.get(request_id)
    if entry is None or entry.finished:
        return
    del entry.sent[num_tokens:]
    if entry.logprobs is not None:
        del entry.logprobs[num_tokens:]
    entry.finish_reason = "stop"
    _end(router, entry)


def _end(router: Router, entry: JournalEntry) -> None:
    """Stop taking its tokens, abort it on its replica, and keep its record."""
    if not entry.finished:
        entry.finished = True
        owner = router.slots.get(entry.replica_id or "")
        if owner is not None and owner.healthy:
            router._spawn(router._quiet_abort(owner, entry.request_id), f"abort {entry.request_id}")
    router.journal.remove(entry.request_id)
