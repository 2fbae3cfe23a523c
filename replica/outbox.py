"""A replica's outbox: what its steps made since the last drain, handed out by long polls.

The engine thread publishes into it once per step; callers drain it with a poll that waits for
news. Polls may be parked by several callers at once (over Ray: the router's long poll and each
submit waiting for its first token). News wakes only the newest parked poll, and no other until
that one has drained, so one reply carries it all and no empty reply races it. Each drain is
numbered (`seq`, within the channel's `epoch`), so a caller that has several drains in flight at
once can put them back in order.

Several routers (one per frontend) may serve from one replica, so the outbox has one channel
per consumer: a request's tokens go only to the channel of the consumer that submitted (or
imported) it, while cache events and the engine's stats go to every channel, so each router
routes with the same view of the replica (and hears which requests the replica took since, with
the stats that count them). A router alone uses the default channel `""`. A named
channel not polled for `idle_s` is dropped with its requests (their consumer is gone: the
replica aborts them; the journal lets a client resume them elsewhere), and a channel holds at
most `MAX_EVENTS` undrained cache events (the oldest go first: the prefix index is a hint).
"""
from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from shunter.logprobs import TokenLogprobs
from shunter.replica.engine_protocol import CacheEvent, EngineOutput, EngineStats

DEFAULT = ""  # the consumer of a replica that one router serves from
MAX_EVENTS = 65536
IDLE_S = 30.0


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
    new_logprobs: list[TokenLogprobs] | None = None  # one per new token, when the request asks
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # with output token 0, when asked


@dataclass
class PollResult:
    """One drain of a channel: the `seq`-th of its life `epoch` (a restarted replica, or a channel
    dropped and made again, has a new one)."""

    stats: EngineStats
    deltas: list[TokenDelta] = field(default_factory=list)
    events: list[CacheEvent] = field(default_factory=list)
    epoch: int = 0
    seq: int = 0
    published: int = 0  # the engine's publishes so far: `stats` is from the last (a timed-out poll repeats it)
    taken: list[str] = field(default_factory=list)  # requests submitted since the last drain, all counted in `stats`


Wake = Callable[[], None]


@dataclass(eq=False)
class _Channel:
    """What one consumer has not drained yet, and its parked polls."""

    epoch: int
    deltas: dict[str, TokenDelta] = field(default_factory=dict)
    events: list[CacheEvent] = field(default_factory=list)
    taken: list[str] = field(default_factory=list)
    waiters: list[Wake] = field(default_factory=list)  # parked polls, newest last
    woken: bool = False  # a woken poll has not drained yet
    seq: int = 0
    polled_at: float = field(default_factory=time.monotonic)


class Outbox:
    def __init__(self, stats: EngineStats, idle_s: float = IDLE_S) -> None:
        self._lock = threading.Lock()
        self._stats = stats
        self.epoch = random.getrandbits(62)
        self._channels: dict[str, _Channel] = {DEFAULT: _Channel(self.epoch)}
        self._owners: dict[str, str] = {}  # request id -> consumer, for requests not on the default channel
        self._idle_s = idle_s
        self._swept_at = time.monotonic()
        self._published = 0
        self._taken: list[str] = []  # submitted since the last publish (its stats will count them)

    def _channel(self, consumer: str) -> _Channel:
        """The consumer's channel, made on first use (under the lock)."""
        ch = self._channels.get(consumer)
        if ch is None:
            ch = self._channels[consumer] = _Channel(random.getrandbits(62))
        return ch

    # ---- who gets a request's tokens -------------------------------------------------------
    def own(self, request_id: str, consumer: str) -> None:
        """From now on `consumer` gets this request's deltas (it submitted or imported it)."""
        with self._lock:
            if consumer == DEFAULT:
                self._owners.pop(request_id, None)
            else:
                self._owners[request_id] = consumer
                self._channel(consumer)

    def taken(self, request_id: str) -> None:
        """The engine took this submitted request; the next publish's stats count it, and every
        channel hears so with them (another frontend stops counting it as pending then)."""
        with self._lock:
            self._taken.append(request_id)

    def release(self, request_id: str) -> None:
        """The request left the engine (aborted or exported)."""
        with self._lock:
            self._owners.pop(request_id, None)

    # ---- the engine thread's side ------------------------------------------------------------
    def publish(self, outputs: list[EngineOutput], events: list[CacheEvent], stats: EngineStats) -> list[str]:
        """One step's news. Returns the requests of consumers found gone (the caller aborts them)."""
        with self._lock:
            owners, channels = self._owners, self._channels
            for out in outputs:
                ch = channels.get(owners.get(out.request_id, DEFAULT) if owners else DEFAULT)
                if ch is None:
                    continue  # its consumer is gone
                prev = ch.deltas.get(out.request_id)
                if out.error is not None:  # taken, then found unservable: refused as a bad request
                    ch.deltas[out.request_id] = TokenDelta(out.request_id, [], 0, "error", error=out.error,
                                                           invalid=True)
                elif prev is None:
                    ch.deltas[out.request_id] = TokenDelta(
                        out.request_id, list(out.new_token_ids), out.num_output_tokens, out.finish_reason,
                        out.num_cached_tokens,
                        new_logprobs=None if out.new_logprobs is None else list(out.new_logprobs),
                        prompt_logprobs=out.prompt_logprobs)
                else:  # the poller is behind: merge steps
                    prev.new_token_ids.extend(out.new_token_ids)
                    if out.new_logprobs is not None:
                        prev.new_logprobs = (prev.new_logprobs or []) + out.new_logprobs
                    prev.prompt_logprobs = prev.prompt_logprobs or out.prompt_logprobs
                    prev.num_output_tokens = out.num_output_tokens
                    prev.finish_reason = out.finish_reason
                if out.finish_reason is not None and owners:
                    owners.pop(out.request_id, None)
            if events or self._taken:
                for ch in channels.values():
                    ch.events.extend(events)
                    ch.taken.extend(self._taken)
                    if len(ch.events) > MAX_EVENTS:
                        del ch.events[: len(ch.events) - MAX_EVENTS]
                    if len(ch.taken) > MAX_EVENTS:
                        del ch.taken[: len(ch.taken) - MAX_EVENTS]
                self._taken = []
            self._stats = stats
            self._published += 1
            wakes = [w for w in map(self._next_waiter, channels.values()) if w is not None]
            gone = self._sweep() if len(channels) > 1 else []
        for wake in wakes:
            wake()
        return gone

    @property
    def stats(self) -> EngineStats:
        """The engine's stats at the last publish; any thread may read them (each publish brings
        a new object, never changes the one handed out)."""
        return self._stats

    def refuse(self, request_id: str, error: Exception) -> None:
        """The engine would not take the request; the next publish sends the refusal."""
        with self._lock:
            ch = self._channel(self._owners.pop(request_id, DEFAULT))
            ch.deltas[request_id] = TokenDelta(request_id, [], 0, "error", error=str(error) or type(error).__name__,
                                               invalid=isinstance(error, ValueError))

    def _sweep(self) -> list[str]:
        """Drop named channels nobody polled for `idle_s` (at most once a second; under the lock);
        returns their requests."""
        now = time.monotonic()
        if now - self._swept_at < 1.0:
            return []
        self._swept_at = now
        gone = {c for c, ch in self._channels.items()
                if c != DEFAULT and not ch.waiters and now - ch.polled_at > self._idle_s}
        for consumer in gone:
            del self._channels[consumer]
        orphans = [rid for rid, c in self._owners.items() if c in gone]
        for rid in orphans:
            del self._owners[rid]
        return orphans

    # ---- the pollers' side -------------------------------------------------------------------
    async def poll(self, max_wait: float, consumer: str = DEFAULT) -> PollResult:
        """Everything made for `consumer` since its last drain; waits up to `max_wait` s for
        something. The engine thread wakes a bare future (no Event, no wait_for task): one hand-off."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_set_done, waiter)

        if self._park(consumer, wake):
            timer = loop.call_later(max_wait, _set_done, waiter)
            try:
                await waiter
            except BaseException:  # cancelled: if it was woken, another poll must take the news
                self._unpark(consumer, wake, pass_on=True)
                raise
            finally:
                timer.cancel()
            self._unpark(consumer, wake)
        return self._drain(consumer)

    def poll_blocking(self, max_wait: float, then: Callable[[], None] | None = None,
                      limit: int | None = None, consumer: str = DEFAULT) -> PollResult:
        """`poll` for a caller on a thread of its own (a threaded actor), woken by the engine
        thread directly. `then` runs once the poll is parked, so what it starts (a submit)
        wakes this poll; with `limit` polls parked already it does not wait."""
        event = threading.Event()
        parked = self._park(consumer, event.set, limit)
        if then is not None:
            then()
        if parked:
            event.wait(max_wait)
            self._unpark(consumer, event.set)
        return self._drain(consumer)

    def _park(self, consumer: str, wake: Wake, limit: int | None = None) -> bool:
        """Park `wake` unless there is news now (or `limit` polls are parked); True if parked."""
        with self._lock:
            ch = self._channel(consumer)
            ch.polled_at = time.monotonic()
            if ch.deltas or ch.events or (limit is not None and len(ch.waiters) >= limit):
                return False
            ch.waiters.append(wake)
            return True

    def _unpark(self, consumer: str, wake: Wake, pass_on: bool = False) -> None:
        """Take back a parked poll; `pass_on`: it leaves without draining, so if it was woken,
        wake another in its place."""
        with self._lock:
            ch = self._channels.get(consumer)
            if ch is None:
                return
            if wake in ch.waiters:
                ch.waiters.remove(wake)
                return
            if not pass_on:
                return
            ch.woken = False
            other = self._next_waiter(ch)
        if other is not None:
            other()

    @staticmethod
    def _next_waiter(ch: _Channel) -> Wake | None:
        """The channel's poll to wake now, if any (under the lock)."""
        if ch.woken or not ch.waiters or not (ch.deltas or ch.events):
            return None
        ch.woken = True
        return ch.waiters.pop()

    def _drain(self, consumer: str) -> PollResult:
        with self._lock:
            ch = self._channel(consumer)
            result = PollResult(self._stats, list(ch.deltas.values()), ch.events, ch.epoch, ch.seq, self._published,
                                ch.taken)
            ch.deltas, ch.events, ch.taken = {}, [], []
            ch.seq += 1
            ch.woken = False
            ch.polled_at = time.monotonic()
        return result


def _set_done(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
