"""Writes to Redis off the token path, and what an outage does to them.

The router never awaits Redis: `put` appends a command to a list and wakes this writer's task,
which waits `interval_s` (5 ms: the streams woken by the same poll send their tokens first, and
a batch gathers the commands of many requests, since a pipeline costs ~80 us of this thread's
time whatever it holds and a command ~15 us more), then sends everything queued in one
pipeline; what is queued while a batch is out goes in the next. Commands go in the order they
were put. The price is lag: Redis learns of a token or a placement up to ~5 ms after it happened.

When Redis fails (here or in any other task of the store: `down`), the frontend keeps serving
from its local state: one warning, nothing more is queued (it would grow without bound and be
stale), and the task PINGs until Redis answers. Then `resync()` rebuilds, from the frontend's
local state, everything the lost commands would have written, and it is sent ahead of anything
new: the shared state is whole again.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterable

from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)
Command = tuple[Any, ...]
INTERVAL_S = 0.005
OUTAGE = (RedisConnectionError, RedisTimeoutError, OSError)  # Redis is gone (a command's own error is not this)


class RedisWriter:
    def __init__(self, client: Any, where: str, resync: Callable[[], list[Command]], interval_s: float = INTERVAL_S,
                 probe_s: float = 0.25) -> None:
        self.client, self.where, self._resync = client, where, resync
        self.interval_s, self._probe_s = interval_s, probe_s
        self.up = True
        self._ops: list[Command] = []
        self._sending = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis-writer")

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Send what is queued (while Redis answers, up to `timeout_s`), then stop."""
        try:
            await asyncio.wait_for(self.flush(), timeout_s)
        except asyncio.TimeoutError:
            log.warning("state store: %d commands to Redis at %s not sent at stop", len(self._ops), self.where)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def flush(self) -> None:
        """Until everything put so far is sent (or Redis is down: then it is dropped)."""
        while self.up and (self._ops or self._sending):
            await asyncio.sleep(0.002)

    def put(self, *command: Any) -> None:
        if self.up:
            self._ops.append(command)
            self._wake.set()

    def put_all(self, commands: Iterable[Command]) -> None:
        if self.up:
            self._ops.extend(commands)
            self._wake.set()

    def append(self, key: str, data: bytes) -> None:
        """APPEND, merged into the command before when that is an APPEND to the same key."""
        if not self.up:
            return
        if self._ops and self._ops[-1][0] == "APPEND" and self._ops[-1][1] == key:
            self._ops[-1] = ("APPEND", key, self._ops[-1][2] + data)
        else:
            self._ops.append(("APPEND", key, data))
            self._wake.set()

    def down(self, error: BaseException) -> None:
        """Redis failed: warn once, drop what is queued, and wait for it to come back."""
        if self.up:
            self.up = False
            self._ops.clear()
            log.warning("state store: Redis at %s is unreachable (%s: %s); serving from local state until it returns",
                        self.where, type(error).__name__, error)
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.up:
                await self._recover()
                continue
            await asyncio.sleep(self.interval_s)
            ops, self._ops = self._ops, []
            if not ops:
                continue
            self._sending = True
            try:
                await self._send(ops)
            except OUTAGE as e:
                self.down(e)
            finally:
                self._sending = False
            if self._ops:
                self._wake.set()

    async def _send(self, ops: list[Command]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for op in ops:
            pipe.execute_command(*op)
        results = await pipe.execute(raise_on_error=False)
        failed = [(op[0], r) for op, r in zip(ops, results) if isinstance(r, RedisError)]
        if failed:  # a command Redis refused (not an outage): a bug here, say so and go on
            log.error("state store: Redis refused %d of %d commands, first: %s %s", len(failed), len(ops), *failed[0])

    async def _recover(self) -> None:
        """PING until Redis answers, then queue the resync ahead of anything new."""
        delay, refused = self._probe_s, False
        while True:
            await asyncio.sleep(delay)
            try:
                await self.client.ping()
                break
            except (RedisError, OSError) as e:
                delay = min(2 * delay, 2.0)
                if isinstance(e, (AuthenticationError, ResponseError)) and not refused:  # answers, but not to us
                    refused = True
                    log.error("state store: Redis at %s answers but refuses this frontend: %s", self.where, e)
        self._ops = self._resync()
        self.up = True
        self._wake.set()
        log.warning("state store: Redis at %s is back; resynchronising (%d commands)", self.where, len(self._ops))
