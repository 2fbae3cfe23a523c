"""One replica's serving loop, independent of how it is reached (Ray actor or in-process).

The engine is not thread-safe and its `step()` blocks for a whole forward pass, so it runs on a
thread of its own; everything else (submit, abort, export, import) is queued as a command the
loop runs between two steps. What the steps make is collected in an `Outbox` that callers drain
with one long poll: every token of every request since the last poll comes back in one reply,
so the cost of crossing to the router is per step, never per token. Every call has a blocking
form (a future, or `poll_blocking`) for callers on threads of their own, like the Ray actor.
"""
from __future__ import annotations

import concurrent.futures
import importlib
import logging
import os
import queue
import socket
import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

from shunter.replica.engine_config import EngineConfig
from shunter.replica.engine_protocol import (
    EngineOutput,
    EngineProtocol,
    KVStage,
    MigrationState,
    ModelLimits,
    Tokenizer,
)
from shunter.replica.outbox import DEFAULT, Outbox, PollResult, TokenDelta  # noqa: F401 (TokenDelta: for the router)
from shunter.sampling_params import SamplingParams

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_PARKED = 4  # a submit's reply waits for its first token only while fewer polls than this wait


@dataclass
class ReplicaInfo:
    """What the router and frontend need to know of the model behind a replica."""

    replica_id: str
    node: str
    pid: int
    limits: ModelLimits
    tokenizer: Tokenizer | None = None
    large_cache: bool = False  # given the larger KV pool: the router sends it the long requests
    prefill_only: bool = False  # P/D disaggregation: the router sends it long prefills and hands them off
    metrics_port: int = 0  # the replica's own Prometheus page (a Ray actor's, when asked for); 0: none


class ReplicaStopped(RuntimeError):
    """A command sent to a replica whose loop has stopped (its process is going away)."""


class ReplicaCore:
    def __init__(self, replica_id: str, engine: EngineProtocol, large_cache: bool = False,
                 prefill_only: bool = False) -> None:
        """`large_cache`: this replica's role in cache-size specialization (its pool is the larger);
        `prefill_only`: in P/D disaggregation (the engine runs as any other; the router routes by it)."""
        self.replica_id = replica_id
        self.engine = engine
        self.large_cache, self.prefill_only = large_cache, prefill_only
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self.outbox = Outbox(engine.stats())
        grammars = getattr(engine, "grammars", None)
        if grammars is not None:
            grammars.warm()  # structured output's tokenizer wrap, before the first request needs it
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"engine-{replica_id}", daemon=True)
        self._thread.start()

    def info(self) -> ReplicaInfo:
        return ReplicaInfo(self.replica_id, socket.gethostname(), os.getpid(), self.engine.limits, self.engine.tokenizer,
                           self.large_cache, self.prefill_only)

    # ---- commands, run on the engine thread between steps ----------------------------------
    def call(self, fn: Callable[[EngineProtocol], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._stopped:
            future.set_exception(ReplicaStopped(f"replica {self.replica_id} has stopped"))
            return future
        self._commands.put((fn, future))
        self._wake.set()
        return future

    def submit(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
               consumer: str = DEFAULT) -> None:
        """Queue the request and return at once; its tokens (or a refusal: a delta with `error`)
        go to `consumer`'s channel of the outbox."""
        self.call(lambda e: self._add(e, request_id, prompt_token_ids, params, consumer))

    def _add(self, engine: EngineProtocol, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
             consumer: str) -> None:
        self.outbox.own(request_id, consumer)  # here, in command order: after an abort of the same id
        try:
            engine.add_request(request_id, prompt_token_ids, params)
        except Exception as e:
            self.outbox.refuse(request_id, e)
        else:
            self.outbox.taken(request_id)

    def abort(self, request_id: str) -> concurrent.futures.Future[EngineOutput | None]:
        def take(engine: EngineProtocol) -> EngineOutput | None:
            self.outbox.release(request_id)
            return engine.abort_request(request_id)

        return self.call(take)

    def export(self, request_id: str, with_kv: bool = True, from_block: int = 0,
               epoch: int | None = None) -> concurrent.futures.Future[MigrationState | None]:
        """The request taken out of this replica; None if it is not here. Without KV the state
        makes the target recompute (as when the blocks cannot be moved). A live migration's
        commit passes the first block its stages did not send, and the epoch they sent in."""
        def take(engine: EngineProtocol) -> MigrationState | None:
            state = self._take_out(engine, request_id, from_block if with_kv else 0, epoch)
            return state.without_kv() if state is not None and not with_kv else state

        return self.call(take)

    def _take_out(self, engine: EngineProtocol, request_id: str, from_block: int,
                  epoch: int | None) -> MigrationState | None:
        """The request out of the engine and out of the outbox (its tokens go with the state)."""
        state = engine.export_request(request_id, from_block, epoch)
        self.outbox.release(request_id)
        return state

    def stream_blocks(self, request_id: str, first_block: int, epoch: int | None
                      ) -> concurrent.futures.Future[tuple[KVStage | None, MigrationState | None]]:
        """A streamed migration's next call (P/D's hand-off): (a stage, None) while the request
        prefills, the blocks completed since `first_block`; (None, the commit's state) once its
        prompt is computed: it is taken out at this step boundary (as `export` would, from
        `first_block` in `epoch`), so it makes no token here past its first and the commit waits
        for no further step; (None, None) if it is not here."""
        def take(engine: EngineProtocol) -> tuple[KVStage | None, MigrationState | None]:
            if not engine.prefilled(request_id):
                return engine.export_blocks(request_id, first_block, 1), None
            return None, self._take_out(engine, request_id, first_block, epoch)

        return self.call(take)

    # ---- live migration: stages while the request runs; `export`/`import_` commit ----------
    def export_blocks(self, request_id: str, first_block: int,
                      min_blocks: int = 1) -> concurrent.futures.Future[KVStage | None]:
        return self.call(lambda e: e.export_blocks(request_id, first_block, min_blocks))

    def reserve(self, request_id: str, num_blocks: int) -> concurrent.futures.Future[bool]:
        return self.call(lambda e: e.reserve_migration(request_id, num_blocks))

    def import_blocks(self, stage: KVStage) -> concurrent.futures.Future[bool]:
        return self.call(lambda e: e.import_blocks(stage))

    def cancel_migration(self, request_id: str) -> concurrent.futures.Future[int]:
        return self.call(lambda e: e.cancel_migration(request_id))

    def import_(self, state: MigrationState, consumer: str = DEFAULT) -> concurrent.futures.Future[int]:
        """Resume an exported request here, its tokens going to `consumer`; the tokens it resumed
        with KV (0: it recomputes)."""
        def take(engine: EngineProtocol) -> int:
            self.outbox.own(state.request_id, consumer)
            resumed = engine.import_request(state)
            self.outbox.taken(state.request_id)  # the next drain lists it: other frontends stop counting it pending
            return resumed

        return self.call(take)

    # ---- the outbox ------------------------------------------------------------------------
    async def poll(self, max_wait: float = 0.5, consumer: str = DEFAULT) -> PollResult:
        """Everything made for `consumer` since its last poll; waits up to `max_wait` s for something."""
        return await self.outbox.poll(max_wait, consumer)

    def poll_blocking(self, max_wait: float = 0.5, consumer: str = DEFAULT) -> PollResult:
        return self.outbox.poll_blocking(max_wait, consumer=consumer)

    def submit_and_poll(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                        max_wait: float, consumer: str = DEFAULT) -> PollResult:
        """Submit with a poll parked first (blocking): the step that makes the first token wakes
        this newest poll, so one reply takes the request in and brings its first token out.
        Under load (`MAX_PARKED` polls waiting already) it returns at once; the others bring it."""
        return self.outbox.poll_blocking(max_wait, lambda: self.submit(request_id, prompt_token_ids, params, consumer),
                                         MAX_PARKED, consumer)

    # ---- the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped:
            self._run_commands()
            for request_id in self.engine.expire_migrations():
                log.warning("replica %s: freed the blocks held for %s, whose migration never came", self.replica_id,
                            request_id)
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
        for request_id in self.outbox.publish(outputs, self.engine.drain_cache_events(), self.engine.stats()):
            log.warning("replica %s: aborting %s, whose router stopped polling", self.replica_id, request_id)
            self.engine.abort_request(request_id)

    def stop(self) -> None:
        """End the loop; commands it did not run fail with ReplicaStopped (none waits forever)."""
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=5)
        while True:
            try:
                _, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(ReplicaStopped(f"replica {self.replica_id} stopped before running it"))


def load_engine(config: EngineConfig, engine_factory: str | None = None) -> EngineProtocol:
    """Build the engine: the real one, or `module:callable(config)` (the `fake:` models name
    `shunter.testing.fake_engine:FakeEngine`; the import is by name so this layer never imports it)."""
    if engine_factory:
        module, _, name = engine_factory.partition(":")
        return getattr(importlib.import_module(module), name)(config)
    from shunter.replica.engine import Engine

    return Engine(config)
