"""How the router reaches a replica: one async interface, two ways (Ray actor, in-process).

The router only ever sees `ReplicaClient`; a dead replica shows as `ReplicaDead` from any call,
whatever transport noticed it, so failover has one trigger.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from shunter.errors import ReplicaUnavailable
from shunter.router.replica_core import PollResult, ReplicaCore, ReplicaInfo


class ReplicaDead(ReplicaUnavailable):
    """The replica's process is gone (it may come back: ask `info()` until it answers)."""


class ReplicaClient(Protocol):
    replica_id: str

    async def info(self) -> ReplicaInfo: ...
    async def submit(self, request_id: str, prompt_token_ids: list[int], params: Any) -> None: ...
    async def abort(self, request_id: str) -> None: ...
    async def poll(self, max_wait: float) -> PollResult: ...
    async def export(self, request_id: str, with_kv: bool = True) -> tuple[list[int] | None, Any]: ...
    async def import_(self, state: Any) -> int: ...  # tokens resumed with KV (0: recomputed)


class LocalReplicaClient:
    """A replica in this process (tests, and `serve --replicas 0` style debugging). `kill()` and
    `restart()` play a process dying and its supervisor bringing it back."""

    def __init__(self, replica_id: str, engine_factory: Callable[[], Any]) -> None:
        self.replica_id = replica_id
        self._factory = engine_factory
        self.core: ReplicaCore | None = ReplicaCore(replica_id, engine_factory())

    def _alive(self) -> ReplicaCore:
        if self.core is None:
            raise ReplicaDead(f"replica {self.replica_id} is down")
        return self.core

    def kill(self) -> None:
        core, self.core = self.core, None
        if core is not None:
            core.stop()

    def restart(self) -> None:
        self.kill()
        self.core = ReplicaCore(self.replica_id, self._factory())

    async def info(self) -> ReplicaInfo:
        return self._alive().info()

    async def submit(self, request_id: str, prompt_token_ids: list[int], params: Any) -> None:
        await self._alive().submit(request_id, prompt_token_ids, params)

    async def abort(self, request_id: str) -> None:
        await self._alive().abort(request_id)

    async def poll(self, max_wait: float) -> PollResult:
        core = self._alive()
        result = await core.poll(max_wait)
        if self.core is not core:
            raise ReplicaDead(f"replica {self.replica_id} died during a poll")
        return result

    async def export(self, request_id: str, with_kv: bool = True) -> tuple[list[int] | None, Any]:
        return await self._alive().export(request_id, with_kv)

    async def import_(self, state: Any) -> int:
        return await self._alive().import_(state)
