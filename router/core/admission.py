"""Admission control: how many requests generate at once, and how many may wait for a turn.

At most `max_in_flight` requests are placed on replicas; up to `max_queued` more wait here in
arrival order (a waiting request holds no KV and costs the replicas nothing). Past both the
request is refused at once with `Overloaded`, carrying a retry hint: an estimate of when a slot
frees, from how long recent requests held theirs. A waiter whose client leaves (cancel,
disconnect, deadline) is dropped from the queue by the cancellation itself; a slot handed to a
waiter that left in the same instant is passed on, never lost.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from shunter.errors import Overloaded

MIN_RETRY_MS, MAX_RETRY_MS = 50, 30_000
EWMA = 0.2  # weight of the newest request's hold time in the running estimate


class Admission:
    def __init__(self, max_in_flight: int, max_queued: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        if max_in_flight < 1 or max_queued < 0:
            raise ValueError(f"max_in_flight must be >= 1 and max_queued >= 0, got {max_in_flight}, {max_queued}")
        self.max_in_flight, self.max_queued, self.clock = max_in_flight, max_queued, clock
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.mean_hold_s = 1.0  # until a request has finished: a guess of one second

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def retry_after_ms(self) -> int:
        """When a retry could find room: the queue ahead drains at max_in_flight per mean hold."""
        wait_s = self.mean_hold_s * (self.queued + 1) / self.max_in_flight
        return int(min(MAX_RETRY_MS, max(MIN_RETRY_MS, wait_s * 1000)))

    async def acquire(self) -> float:
        """Take a slot, waiting in line if all are taken; the time it was taken (for `release`).
        Overloaded when the line is full too."""
        if self.active < self.max_in_flight and not self._waiters:
            self.active += 1
            return self.clock()
        if len(self._waiters) >= self.max_queued:
            raise Overloaded(f"{self.active} requests in flight and {self.queued} queued "
                             f"(max_in_flight={self.max_in_flight}, max_queued={self.max_queued})",
                             retry_after_ms=self.retry_after_ms())
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot as it left: pass it on
                self._release_slot()
            else:
                self._waiters.remove(waiter)
            raise
        return self.clock()

    def close(self, error: Exception) -> int:
        """Refuse everyone in line with `error` (the server stops); how many there were."""
        waiting = [w for w in self._waiters if not w.done()]
        self._waiters.clear()
        for waiter in waiting:
            waiter.set_exception(error)
        return len(waiting)

    def release(self, taken_at: float) -> None:
        """Give the slot back; the next in line (if any) gets it."""
        self.mean_hold_s += EWMA * (self.clock() - taken_at - self.mean_hold_s)
        self._release_slot()

    def _release_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to it: `active` stays the same
                return
        self.active -= 1
