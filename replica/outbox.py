"""A replica's outbox: what its steps made since the last drain, handed out by long polls.

The engine thread publishes into it once per step; callers drain it with a poll that waits for
news. Polls may be parked by several callers at once (over Ray: the router's long poll and each
submit waiting for its first token). News wakes only the newest parked poll, and no other until
that one has drained, so one reply carries it all and no empty reply races it. Each drain is
numbered (`seq`, within the outbox's `epoch`), so a caller that has several drains in flight at
once can put them back in order.
"""
from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field
from typing import Callable

from shunter.replica.engine_protocol import CacheEvent, EngineOutput, EngineStats


@dataclass
class TokenDelta:
    """New tokens of one request from one step (or a few, if the poller was slow)."""

    request_id: str
    new_token_ids: list[int]
    num_output_tokens: int  # len(output_token_ids) on this replica after these tokens
    finish_reason: str | None = None
    num_cached_tokens: int = 0
    error: str | None = None  # the engine refused the request (finish_reason "error")
    invalid: bool = False  # ... because the request itself is wrong (ValueError: INVALID_ARGUMENT)


@dataclass
class PollResult:
    """One drain of the outbox: the `seq`-th of its life `epoch` (a restarted replica has a new one)."""

    stats: EngineStats
    deltas: list[TokenDelta] = field(default_factory=list)
    events: list[CacheEvent] = field(default_factory=list)
    epoch: int = 0
    seq: int = 0


Wake = Callable[[], None]


class Outbox:
    def __init__(self, stats: EngineStats) -> None:
        self._lock = threading.Lock()
        self._deltas: dict[str, TokenDelta] = {}
        self._events: list[CacheEvent] = []
        self._stats = stats
        self._waiters: list[Wake] = []  # parked polls, newest last
        self._woken = False  # a woken poll has not drained yet
        self.epoch = random.getrandbits(62)
        self._seq = 0

    # ---- the engine thread's side ------------------------------------------------------------
    def publish(self, outputs: list[EngineOutput], events: list[CacheEvent], stats: EngineStats) -> None:
        with self._lock:
            for out in outputs:
                prev = self._deltas.get(out.request_id)
                if prev is None:
                    self._deltas[out.request_id] = TokenDelta(
                        out.request_id, list(out.new_token_ids), out.num_output_tokens, out.finish_reason,
                        out.num_cached_tokens)
                else:  # the poller is behind: merge steps
                    prev.new_token_ids.extend(out.new_token_ids)
                    prev.num_output_tokens = out.num_output_tokens
                    prev.finish_reason = out.finish_reason
            self._events.extend(events)
            self._stats = stats
            wake = self._next_waiter()
        if wake is not None:
            wake()

    @property
    def stats(self) -> EngineStats:
        """The engine's stats at the last publish; any thread may read them (each publish brings
        a new object, never changes the one handed out)."""
        return self._stats

    def refuse(self, request_id: str, error: Exception) -> None:
        """The engine would not take the request; the next publish sends the refusal."""
        with self._lock:
            self._deltas[request_id] = TokenDelta(request_id, [], 0, "error", error=str(error) or type(error).__name__,
                                                  invalid=isinstance(error, ValueError))

    # ---- the pollers' side -------------------------------------------------------------------
    async def poll(self, max_wait: float) -> PollResult:
        """Everything made since the last drain; waits up to `max_wait` s for something. The
        engine thread wakes a bare future (no Event, no wait_for task): one hand-off."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_set_done, waiter)

        if self._park(wake):
            timer = loop.call_later(max_wait, _set_done, waiter)
            try:
                await waiter
            except BaseException:  # cancelled: if it was woken, another poll must take the news
                self._unpark(wake, pass_on=True)
                raise
            finally:
                timer.cancel()
            self._unpark(wake)
        return self._drain()

    def poll_blocking(self, max_wait: float, then: Callable[[], None] | None = None,
                      limit: int | None = None) -> PollResult:
        """`poll` for a caller on a thread of its own (a threaded actor), woken by the engine
        thread directly. `then` runs once the poll is parked, so what it starts (a submit)
        wakes this poll; with `limit` polls parked already it does not wait."""
        event = threading.Event()
        parked = self._park(event.set, limit)
        if then is not None:
            then()
        if parked:
            event.wait(max_wait)
            self._unpark(event.set)
        return self._drain()

    def _park(self, wake: Wake, limit: int | None = None) -> bool:
        """Park `wake` unless there is news now (or `limit` polls are parked); True if parked."""
        with self._lock:
            if self._deltas or self._events or (limit is not None and len(self._waiters) >= limit):
                return False
            self._waiters.append(wake)
            return True

    def _unpark(self, wake: Wake, pass_on: bool = False) -> None:
        """Take back a parked poll; `pass_on`: it leaves without draining, so if it was woken,
        wake another in its place."""
        with self._lock:
            if wake in self._waiters:
                self._waiters.remove(wake)
                return
            if not pass_on:
                return
            self._woken = False
            other = self._next_waiter()
        if other is not None:
            other()

    def _next_waiter(self) -> Wake | None:
        """The poll to wake now, if any (under the lock)."""
        if self._woken or not self._waiters or not (self._deltas or self._events):
            return None
        self._woken = True
        return self._waiters.pop()

    def _drain(self) -> PollResult:
        with self._lock:
            result = PollResult(self._stats, list(self._deltas.values()), self._events, self.epoch, self._seq)
            self._deltas, self._events = {}, []
            self._seq += 1
            self._woken = False
        return result


def _set_done(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
