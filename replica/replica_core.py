"""One replica's serving loop, independent of how it is reached (Ray actor or in-process).

The engine is not thread-safe and its `step()` blocks for a whole forward pass, so it runs on a
thread of its own; everything else (submit, abort, export, import) is queued as a command the
loop runs between two steps. What the steps make is collected in an outbox that callers drain
with one long `poll()`: every token of every request since the last poll comes back in one
reply, so the cost of crossing to the router is per step, never per token.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import os
import queue
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from shunter.replica.engine_config import EngineConfig
from shunter.replica.engine_protocol import (
    CacheEvent,
    EngineOutput,
    EngineProtocol,
    EngineStats,
    MigrationState,
    ModelLimits,
    Tokenizer,
)
from shunter.sampling_params import SamplingParams

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    stats: EngineStats
    deltas: list[TokenDelta] = field(default_factory=list)
    events: list[CacheEvent] = field(default_factory=list)


@dataclass
class ReplicaInfo:
    """What the router and frontend need to know of the model behind a replica."""

    replica_id: str
    node: str
    pid: int
    limits: ModelLimits
    tokenizer: Tokenizer | None = None
    large_cache: bool = False  # given the larger KV pool: the router sends it the long requests


class ReplicaCore:
    def __init__(self, replica_id: str, engine: EngineProtocol, large_cache: bool = False) -> None:
        """`large_cache`: this replica's role in cache-size specialization (its pool is the larger)."""
        self.replica_id = replica_id
        self.engine = engine
        self.large_cache = large_cache
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._deltas: dict[str, TokenDelta] = {}
        self._events: list[CacheEvent] = []
        self._stats = engine.stats()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"engine-{replica_id}", daemon=True)
        self._thread.start()

    def info(self) -> ReplicaInfo:
        return ReplicaInfo(self.replica_id, socket.gethostname(), os.getpid(), self.engine.limits, self.engine.tokenizer,
                           self.large_cache)

    # ---- commands, run on the engine thread between steps ----------------------------------
    def call(self, fn: Callable[[EngineProtocol], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put((fn, future))
        self._wake.set()
        return future

    async def run(self, fn: Callable[[EngineProtocol], T]) -> T:
        return await asyncio.wrap_future(self.call(fn))

    async def submit(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Queue the request and return at once (the reply is off the first token's path); a
        refusal comes back through `poll` as a delta with `error`."""
        self.call(lambda e: self._add(e, request_id, prompt_token_ids, params))

    def _add(self, engine: EngineProtocol, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        try:
            engine.add_request(request_id, prompt_token_ids, params)
        except Exception as e:
            with self._lock:
                self._deltas[request_id] = TokenDelta(request_id, [], 0, "error", error=str(e) or type(e).__name__,
                                                      invalid=isinstance(e, ValueError))

    async def abort(self, request_id: str) -> None:
        await self.run(lambda e: e.abort_request(request_id))

    async def export(self, request_id: str, with_kv: bool = True) -> MigrationState | None:
        """The request taken out of this replica; None if it is not here. Without KV the state
        makes the target recompute (as when the blocks cannot be moved)."""
        state = await self.run(lambda e: e.export_request(request_id))
        if state is not None and not with_kv:
            state = state.without_kv()
        return state

    async def import_(self, state: MigrationState) -> int:
        """Resume an exported request here; the tokens it resumed with KV (0: it recomputes)."""
        return await self.run(lambda e: e.import_request(state))

    # ---- the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped:
            self._run_commands()
            if self.engine.has_unfinished_requests():
                try:
                    outputs = self.engine.step()
                except Exception:  # a broken engine must not hang its streams: kill the replica
                    log.exception("replica %s: engine step failed", self.replica_id)
                    os._exit(1)
                self._publish(outputs)
            else:
                self._publish([])
                self._wake.wait(0.05)
                self._wake.clear()

    def _run_commands(self) -> None:
        while True:
            try:
                fn, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(self.engine))
            except BaseException as e:  # handed back to the caller (ValueError -> INVALID_ARGUMENT)
                future.set_exception(e)

    def _publish(self, outputs: list[EngineOutput]) -> None:
        events = self.engine.drain_cache_events()
        stats = self.engine.stats()
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
            waiters = self._waiters if (self._deltas or self._events) else []
            if waiters:
                self._waiters = []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    async def poll(self, max_wait: float = 0.5) -> PollResult:
        """Everything made since the last poll; waits up to `max_wait` s for something."""
        with self._lock:
            ready = bool(self._deltas or self._events)
            if not ready:
                event = asyncio.Event()
                self._waiters.append((asyncio.get_running_loop(), event))
        if not ready:
            try:
                await asyncio.wait_for(event.wait(), max_wait)
            except asyncio.TimeoutError:
                pass
        with self._lock:
            result = PollResult(self._stats, list(self._deltas.values()), self._events)
            self._deltas, self._events = {}, []
        return result

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=5)


def load_engine(config: EngineConfig, engine_factory: str | None = None) -> EngineProtocol:
    """Build the engine: the real one, or `module:callable(config)` (the `fake:` models name
    `shunter.testing.fake_engine:FakeEngine`; the import is by name so this layer never imports it)."""
    if engine_factory:
        module, _, name = engine_factory.partition(":")
        return getattr(importlib.import_module(module), name)(config)
    from shunter.replica.engine import Engine

    return Engine(config)
