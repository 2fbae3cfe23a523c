"""A replica's outbox drains, handed to the router in the order the replica made them.

Over Ray a replica's drains come back through more than one call at a time: the long poll, and
each submit, whose reply carries the drain that held its first token. Replies to different calls
may arrive in any order, while the router needs drains in order (tokens are placed by position,
the newest load report must win). `DrainOrder` holds an early drain until the ones before it
(by `PollResult.seq`) arrive. A drain is only ever missing for good if the call carrying it
failed, so once no call is in flight a gap is skipped (and logged) rather than waited on.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque

from shunter.replica.replica_core import PollResult, TokenDelta
from shunter.router.core import ReplicaDead

log = logging.getLogger(__name__)


class DrainOrder:
    """Feed it the outcome of every call that carries a drain (`started`, then `put`, `lost` or
    `dead`); `next()` hands the drains out in order. A death ends a generation: outcomes of
    calls started before it are ignored."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self._generation = 0
        self._in_flight = 0
        self._epoch: int | None = None  # the replica's life the drains come from
        self._next = 0
        self._held: dict[int, PollResult] = {}
        self._ready: deque[PollResult] = deque()
        self._orphans: list[TokenDelta] = []  # refusals of calls that failed, sent with the next drain
        self._error: Exception | None = None  # raised by the next `next()`
        self._waiter: asyncio.Future | None = None

    def started(self) -> int:
        """A call that will bring a drain is under way; returns its ticket."""
        self._in_flight += 1
        return self._generation

    def put(self, ticket: int, result: PollResult) -> None:
        if not self._arrived(ticket):
            return
        if self._epoch is None:
            self._epoch = result.epoch
        elif result.epoch != self._epoch:  # restarted between two calls without one failing
            self._die(ReplicaDead(f"replica {self.replica_id} restarted"))
            return
        if result.seq >= self._next:
            self._held[result.seq] = result
        self._release()

    def lost(self, ticket: int, error: Exception, request_id: str | None = None) -> None:
        """The call failed, the replica lives: its drain (if it made one) is gone. The request a
        submit carried is refused; a failed poll raises from `next()`."""
        if not self._arrived(ticket):
            return
        if request_id is not None:
            self._orphans.append(TokenDelta(request_id, [], 0, "error", error=str(error) or type(error).__name__))
        elif self._error is None:
            self._error = error
            self._wake()
        self._release()

    def dead(self, ticket: int, error: ReplicaDead) -> None:
        if self._arrived(ticket):
            self._die(error)

    async def next(self) -> PollResult:
        """The next drain in order (waits for it); raises `ReplicaDead` once per death, and
        what a failed poll raised."""
        while not self._ready and self._error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        result = self._ready.popleft()
        if self._orphans:
            result.deltas.extend(self._orphans)
            self._orphans = []
        return result

    def _arrived(self, ticket: int) -> bool:
        if ticket != self._generation:
            return False
        self._in_flight -= 1
        return True

    def _release(self) -> None:
        if self._held and self._next not in self._held and self._in_flight == 0:
            first = min(self._held)
            log.warning("replica %s: drains %d..%d lost with their calls", self.replica_id, self._next, first - 1)
            self._next = first
        while self._next in self._held:
            self._ready.append(self._held.pop(self._next))
            self._next += 1
        if self._ready:
            self._wake()

    def _die(self, error: ReplicaDead) -> None:
        self._generation += 1
        self._in_flight, self._epoch, self._next = 0, None, 0
        self._held.clear()
        self._ready.clear()
        self._orphans = []
        self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
