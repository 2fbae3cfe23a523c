"""How the router reaches a replica: one async interface, two ways (Ray actor, in-process).

The router only ever sees `ReplicaClient`; a dead replica shows as `ReplicaDead`, whatever
transport noticed it, so failover has one trigger. `poll()` always raises it; a `submit()` that
does not wait for its reply (over Ray) leaves it to `poll()`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import copy
from dataclasses import dataclass
from typing import Callable, Protocol, TypeVar

from shunter.errors import ReplicaUnavailable
from shunter.logprobs import TokenLogprobs
from shunter.replica.engine_protocol import EngineProtocol, KVStage, MigrationState
from shunter.replica.outbox import DEFAULT
from shunter.replica.replica_core import PollResult, ReplicaCore, ReplicaInfo
from shunter.sampling_params import SamplingParams


T = TypeVar("T")


class ReplicaDead(ReplicaUnavailable):
    """The replica's process is gone (it may come back: ask `info()` until it answers)."""


class ExportedRequest(Protocol):
    """A request taken out of one replica, as its transport carries it to another: the router
    reads only the tokens (and their log-probabilities, when asked); the state (and KV) stay
    wherever the transport keeps them."""

    @property
    def output_token_ids(self) -> list[int]: ...
    @property
    def output_logprobs(self) -> list[TokenLogprobs] | None: ...
    @property
    def prompt_logprobs(self) -> list[TokenLogprobs | None] | None: ...


class StagedBlocks(Protocol):
    """One stage of a live migration as its transport carries it: the router reads where the
    stage ends; the blocks stay wherever the transport keeps them until the target takes them."""

    @property
    def num_blocks(self) -> int: ...
    @property
    def end_block(self) -> int: ...
    @property
    def computed_blocks(self) -> int: ...
    @property
    def epoch(self) -> int: ...


class ReplicaClient(Protocol):
    replica_id: str

    async def info(self) -> ReplicaInfo: ...
    async def submit(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None: ...
    async def abort(self, request_id: str) -> None: ...
    async def poll(self, max_wait: float) -> PollResult: ...
    async def export(self, request_id: str, with_kv: bool = True, from_block: int = 0,
                     epoch: int | None = None) -> ExportedRequest | None: ...
    async def import_(self, exported: ExportedRequest) -> int: ...  # tokens resumed with KV (0: recomputed)
    # live migration (`core/migration.py`): stages on the source, a reservation on the target
    async def export_blocks(self, request_id: str, first_block: int, min_blocks: int) -> StagedBlocks | None: ...
    # streamed (P/D's hand-off): a stage while it prefills, else the commit's export (`ReplicaCore.stream_blocks`)
    async def stream_blocks(self, request_id: str, first_block: int, epoch: int | None
                            ) -> tuple[StagedBlocks | None, ExportedRequest | None]: ...
    async def reserve(self, request_id: str, num_blocks: int) -> bool: ...
    async def import_blocks(self, staged: StagedBlocks) -> bool: ...
    async def cancel_migration(self, request_id: str) -> int: ...


class LocalReplicaClient:
    """A replica in this process (tests, benchmarks). `kill()` and `restart()` play a process
    dying and its supervisor bringing it back. `for_consumer()` gives a second router (another
    frontend, in-process) its own client of the same replica."""

    def __init__(self, replica_id: str, engine_factory: Callable[[], EngineProtocol], large_cache: bool = False,
                 consumer: str = DEFAULT, prefill_only: bool = False) -> None:
        self.replica_id = replica_id
        self.consumer = consumer
        core = ReplicaCore(replica_id, engine_factory(), large_cache, prefill_only)
        self._process = _LocalProcess(engine_factory, large_cache, prefill_only, core)

    @property
    def core(self) -> ReplicaCore | None:
        return self._process.core

    def for_consumer(self, consumer: str) -> LocalReplicaClient:
        """A client of this same replica (killed and restarted with it) whose tokens go to `consumer`."""
        twin = copy.copy(self)
        twin.consumer = consumer
        return twin

    def _alive(self) -> ReplicaCore:
        if self.core is None:
            raise ReplicaDead(f"replica {self.replica_id} is down")
        return self.core

    def kill(self) -> None:
        core, self._process.core = self.core, None
        if core is not None:
            core.stop()

    def restart(self) -> None:
        self.kill()
        p = self._process
        p.core = ReplicaCore(self.replica_id, p.factory(), p.large_cache, p.prefill_only)

    async def info(self) -> ReplicaInfo:
        return self._alive().info()

    async def submit(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self._alive().submit(request_id, prompt_token_ids, params, self.consumer)

    async def abort(self, request_id: str) -> None:
        await self._call(self._alive().abort(request_id))

    async def poll(self, max_wait: float) -> PollResult:
        core = self._alive()
        result = await core.poll(max_wait, self.consumer)
        if self.core is not core:
            raise ReplicaDead(f"replica {self.replica_id} died during a poll")
        return result

    async def export(self, request_id: str, with_kv: bool = True, from_block: int = 0,
                     epoch: int | None = None) -> MigrationState | None:
        return await self._call(self._alive().export(request_id, with_kv, from_block, epoch))

    async def import_(self, exported: ExportedRequest) -> int:
        if not isinstance(exported, MigrationState):
            raise TypeError(f"an in-process replica imports a MigrationState, got {type(exported).__name__}")
        return await self._call(self._alive().import_(exported, self.consumer))

    async def export_blocks(self, request_id: str, first_block: int, min_blocks: int) -> KVStage | None:
        return await self._call(self._alive().export_blocks(request_id, first_block, min_blocks))

    async def stream_blocks(self, request_id: str, first_block: int, epoch: int | None
                            ) -> tuple[KVStage | None, MigrationState | None]:
        return await self._call(self._alive().stream_blocks(request_id, first_block, epoch))

    async def reserve(self, request_id: str, num_blocks: int) -> bool:
        return await self._call(self._alive().reserve(request_id, num_blocks))

    async def import_blocks(self, staged: StagedBlocks) -> bool:
        if not isinstance(staged, KVStage):
            raise TypeError(f"an in-process replica takes a KVStage, got {type(staged).__name__}")
        return await self._call(self._alive().import_blocks(staged))

    async def cancel_migration(self, request_id: str) -> int:
        return await self._call(self._alive().cancel_migration(request_id))

    async def _call(self, future: concurrent.futures.Future[T]) -> T:
        """A command's result; ReplicaDead if the replica was killed meanwhile."""
        core = self.core
        try:
            result = await asyncio.wrap_future(future)
        except Exception:
            if self.core is not core:
                raise ReplicaDead(f"replica {self.replica_id} died during the call") from None
            raise
        if self.core is not core:
            raise ReplicaDead(f"replica {self.replica_id} died during the call")
        return result


@dataclass
class _LocalProcess:
    """What the clients of one in-process replica share: its engine loop, or None while it is down."""

    factory: Callable[[], EngineProtocol]
    large_cache: bool
    prefill_only: bool
    core: ReplicaCore | None
