"""The request journal and the state routing shares: one interface (`StateStore`), two stores.

The journal is what makes migration, failover and resume invisible to the client: a request can
be resubmitted anywhere as prompt + tokens already sent, and tokens that arrive twice (or from a
replica that no longer owns the request) are recognised by position and dropped.

`MemoryStateStore` (the default) keeps it in this process: the live requests (`JournalEntry`,
with the queue their stream reads) and, for `RETAIN_S` after a stream ends, a `JournalRecord`
of it, so that a client reconnecting to this frontend can resume it. `RedisStateStore`
(`redis_store.py`) keeps the same here and mirrors it to Redis, so that any frontend can resume
it, and shares placements, the prefix index and the replica registry between frontends.
"""
from __future__ import annotations

import array
import asyncio
import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Protocol, Sequence

from shunter.logprobs import TokenLogprobs
from shunter.replica.outbox import DEFAULT, PollResult
from shunter.router.routing import LoadReport
from shunter.sampling_params import SamplingParams

if TYPE_CHECKING:
    from shunter.router.core.router import Router

LIVE, ENDED, FINISHED = "live", "ended", "finished"  # a record's state: streaming; stopped early; complete
RETAIN_S = 600.0  # a record is kept this long after its stream ends
MAX_RETAINED = 4096  # ... and at most this many records in one process (the oldest go first)


@dataclass
class Delta:
    """What the router hands the frontend for one request: new tokens, maybe the end."""

    token_ids: list[int]
    finish_reason: str | None = None
    num_cached_tokens: int = 0
    replica_id: str = ""
    logprobs: list[TokenLogprobs] | None = None  # one per token, when the request asks
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # with the request's first token, when asked


@dataclass
class JournalEntry:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams  # as submitted by the client
    replica_id: str | None = None  # current owner; None while in transit
    offset: int = 0  # tokens streamed before the current owner got it (its output index 0 = sent[offset])
    sent: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    epoch: int = 0  # bumped at every (re)assignment, so a stale failure cannot fail over twice
    migrating: bool = False
    finished: bool = False
    finish_reason: str | None = None  # why it finished; None while running, or when the client left early
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    # When the request asks: one per token of `sent`, and the prompt's (they came with sent[0]).
    logprobs: list[TokenLogprobs] | None = None
    prompt_logprobs: list[TokenLogprobs | None] | None = None

    def __post_init__(self) -> None:
        if self.params.logprobs is not None and self.logprobs is None:
            self.logprobs = []


@dataclass
class JournalRecord:
    """A request as the journal keeps it apart from a live stream: after its stream ended, or as
    another frontend reads it. Token lists are packed (`array('I')`): records are kept by the
    thousand."""

    request_id: str
    prompt_token_ids: Sequence[int]
    params: SamplingParams
    tokens: Sequence[int]  # every token streamed so far, in order
    state: str = LIVE
    finish_reason: str | None = None
    num_cached_tokens: int = 0
    owner: str = DEFAULT  # the frontend streaming it (while LIVE)
    replica_id: str | None = None  # where it ran last
    logprobs: Sequence[TokenLogprobs] | None = None  # of `tokens`, when the request asks and they are known
    prompt_logprobs: Sequence[TokenLogprobs | None] | None = None


def record_of(entry: JournalEntry, owner: str = DEFAULT) -> JournalRecord:
    """The record of an entry whose stream just ended."""
    state = FINISHED if entry.finish_reason is not None else ENDED
    return JournalRecord(entry.request_id, packed(entry.prompt_token_ids), entry.params, packed(entry.sent), state,
                         entry.finish_reason, entry.num_cached_tokens, owner, entry.replica_id, entry.logprobs,
                         entry.prompt_logprobs)


def resubmitted(params: SamplingParams, num_sent: int) -> SamplingParams:
    """The parameters of a request placed again as prompt + the `num_sent` tokens streamed: the
    tokens still owed, and no prompt log-probabilities once they went out (with the first token)."""
    return dataclasses.replace(params, max_tokens=params.max_tokens - num_sent,
                               prompt_logprobs=params.prompt_logprobs if num_sent == 0 else None)


def packed(tokens: Iterable[int]) -> array.array:
    return array.array("I", tokens)


class StateStore(Protocol):
    """What the router asks of its state. The journal of live entries is this process's own; the
    rest may be shared with other frontends. `placed`, `sent` and `reported` are on the token path:
    they must return at once (a shared store sends them later, batched)."""

    frontend_id: str  # this frontend's channel on every replica (`DEFAULT` when it is alone)
    entries: dict[str, JournalEntry]

    def add(self, entry: JournalEntry) -> None: ...
    def get(self, request_id: str) -> JournalEntry | None: ...
    def remove(self, request_id: str) -> None: ...  # its stream ended: keep its record
    def owned_by(self, replica_id: str) -> list[JournalEntry]: ...
    def __len__(self) -> int: ...
    def placed(self, entry: JournalEntry, blocks: int) -> None: ...  # submitted to entry.replica_id
    def sent(self, entry: JournalEntry, tokens: list[int]) -> None: ...  # appended to entry.sent
    def reported(self, report: LoadReport, result: PollResult, fresh: bool) -> None: ...  # a drain was applied
    async def lookup(self, request_id: str) -> JournalRecord | None: ...
    async def claim(self, record: JournalRecord) -> JournalRecord: ...
    # What to plan over (reports with their requests, moves in flight); None when another frontend plans.
    async def rebalance_view(self, router: Router) -> tuple[list[LoadReport], dict[str, tuple[str, str]]] | None: ...
    def ask_to_migrate(self, owner: str, request_id: str, source: str, target: str) -> None: ...  # another's request
    async def start(self, router: Router) -> None: ...
    async def stop(self) -> None: ...


class MemoryStateStore:
    """All of it in this process: one frontend. Records of ended streams are kept for `retain_s`
    (at most `max_retained` of them), for a client that reconnects here to resume."""

    frontend_id = DEFAULT

    def __init__(self, retain_s: float = RETAIN_S, max_retained: int = MAX_RETAINED) -> None:
        self.entries: dict[str, JournalEntry] = {}
        self.retain_s, self.max_retained = retain_s, max_retained
        self._retired: OrderedDict[str, tuple[float, JournalRecord]] = OrderedDict()

    def add(self, entry: JournalEntry) -> None:
        if entry.request_id in self.entries:
            raise ValueError(f"request_id {entry.request_id!r} is already in flight")
        self.entries[entry.request_id] = entry
        self._retired.pop(entry.request_id, None)

    def get(self, request_id: str) -> JournalEntry | None:
        return self.entries.get(request_id)

    def remove(self, request_id: str) -> None:
        entry = self.entries.pop(request_id, None)
        if entry is not None:
            self.retain(record_of(entry, self.frontend_id))

    def retain(self, record: JournalRecord) -> None:
        self._retired[record.request_id] = (time.monotonic() + self.retain_s, record)
        self._retired.move_to_end(record.request_id)
        while len(self._retired) > self.max_retained:
            self._retired.popitem(last=False)

    def retained(self) -> list[JournalRecord]:
        """The records kept now (expired ones dropped)."""
        now = time.monotonic()
        for rid in [rid for rid, (expires, _) in self._retired.items() if expires <= now]:
            del self._retired[rid]
        return [record for _, record in self._retired.values()]

    def owned_by(self, replica_id: str) -> list[JournalEntry]:
        return [e for e in self.entries.values() if e.replica_id == replica_id and not e.finished]

    def __len__(self) -> int:
        return len(self.entries)

    def placed(self, entry: JournalEntry, blocks: int) -> None:
        pass  # no other frontend to tell

    def sent(self, entry: JournalEntry, tokens: list[int]) -> None:
        pass  # entry.sent is the journal

    def reported(self, report: LoadReport, result: PollResult, fresh: bool) -> None:
        pass  # no other frontend's placements to count; the router's own PrefixIndex is the only one

    async def lookup(self, request_id: str) -> JournalRecord | None:
        item = self._retired.get(request_id)
        if item is None or item[0] <= time.monotonic():
            self._retired.pop(request_id, None)
            return None
        return item[1]

    async def claim(self, record: JournalRecord) -> JournalRecord:
        return record  # no other frontend streams it

    async def rebalance_view(self, router: Router) -> tuple[list[LoadReport], dict[str, tuple[str, str]]] | None:
        return router.reports(with_requests=True), router.migrations_in_flight  # alone: every request is ours

    def ask_to_migrate(self, owner: str, request_id: str, source: str, target: str) -> None:
        raise RuntimeError(f"no other frontend ({owner}) to ask: this store serves one")

    async def start(self, router: Router) -> None:
        pass

    async def stop(self) -> None:
        pass
