"""Replicas as Ray actors: one actor wraps one engine (its loop on its own thread).

The actor is threaded, not async: each call runs on a thread of Ray's pool and blocks there, so
the engine thread wakes a waiting poll directly, with no event loop hand-off on either side.
Tokens come back in per-step batches (drains of the replica's outbox) through a long `poll()`
and through `submit()`, whose reply is the drain that holds the request's first token: the
first token costs one round trip, not a submit reply plus a poll reply. The client puts the
drains of both back in order (`DrainOrder`) and shows the router one `poll()`. Both calls carry
one pickled bytes each way (`_pack`), which Ray passes far cheaper than arguments and dataclasses.

`export` returns three object refs (its tokens, its state, its KV blocks) so the blocks go from
the source actor to the target without passing through the router (the router only reads the
token list). The target fetches the blocks itself: if that fails, it imports the state without
them and recomputes. Actors restart after a crash (`max_restarts=-1`); calls never retry, so a
crash surfaces at once as `ReplicaDead`. Given a `MetricsAddress`, an actor serves its own
Prometheus page from its process (a restarted actor opens it again, on the same port when a port
was given); `info()` says its port, 0 when it has none (none asked for, or the port was taken).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import pickle
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError

from shunter.logprobs import TokenLogprobs
from shunter.replica.engine_config import EngineConfig
from shunter.replica.engine_protocol import KVStage, MigrationState
from shunter.replica.outbox import DEFAULT
from shunter.replica.replica_core import PollResult, ReplicaCore, ReplicaInfo, load_engine
from shunter.router.cluster import kv_transport
from shunter.router.cluster.drain_order import DrainOrder
from shunter.router.cluster.kv_transport import RayStage
from shunter.router.metrics import MetricsAddress
from shunter.router.metrics import MetricsPage, serve_replica_metrics
from shunter.router.core import ExportedRequest, ReplicaDead, StagedBlocks
from shunter.router.cluster.replica_placement import node_label
from shunter.sampling_params import SamplingParams

try:
    from ray.exceptions import ActorUnavailableError
except ImportError:  # older Ray
    ActorUnavailableError = RayActorError  # type: ignore[misc,assignment]

log = logging.getLogger(__name__)
# Threads per actor: a few polls parked (`MAX_PARKED`) plus aborts, migrations and `info`.
MAX_CONCURRENCY = 32


@dataclass
class RayExport:
    """An exported request as Ray holds it: the tokens here, the state and KV as object refs
    in the source's object store, fetched by the target itself."""

    output_token_ids: list[int]
    output_logprobs: list[TokenLogprobs] | None
    prompt_logprobs: list[TokenLogprobs | None] | None
    state_ref: ray.ObjectRef
    kv_ref: ray.ObjectRef


def _pack(obj: Any) -> bytes:
    """The hot calls (submit, poll) pass one pickled bytes each way: Ray serializes a bytes object
    far cheaper than an argument list or a tree of dataclasses (nothing inside holds an ObjectRef)."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


class ReplicaActor:
    def __init__(self, replica_id: str, engine_config: EngineConfig, engine_factory: str | None = None,
                 large_cache: bool = False, metrics: MetricsAddress | None = None, prefill_only: bool = False) -> None:
        self.core = ReplicaCore(replica_id, load_engine(engine_config, engine_factory), large_cache, prefill_only)
        self.node = node_label()  # its IP and Ray node id: which machine, and which node of several on one
        self.metrics_page: MetricsPage | None = None
        if metrics is not None:
            try:
                self.metrics_page = serve_replica_metrics(replica_id, self.core, metrics)
            except OSError as e:  # serve anyway: the page is not worth the replica
                log.warning("replica %s: no metrics page on %s:%d (%s)", replica_id, metrics.host, metrics.port, e)

    def info(self) -> ReplicaInfo:
        port = self.metrics_page.port if self.metrics_page is not None else 0
        return dataclasses.replace(self.core.info(), metrics_port=port, node=self.node)

    def submit(self, packed: bytes) -> bytes:
        """Queue the request (`packed`: request id, prompt, params, wait_s, consumer); reply with
        a packed drain of the consumer's channel, taken once its first token is made (or after wait_s)."""
        request_id, prompt_token_ids, params, wait_s, consumer = pickle.loads(packed)
        return _pack(self.core.submit_and_poll(request_id, prompt_token_ids, params, wait_s, consumer))

    def abort(self, request_id: str) -> None:
        self.core.abort(request_id).result()

    def poll(self, max_wait: float, consumer: str = DEFAULT) -> bytes:
        """A packed drain of `consumer`'s channel."""
        return _pack(self.core.poll_blocking(max_wait, consumer))

    @ray.method(num_returns=3)
    def export(self, request_id: str, with_kv: bool = True, from_block: int = 0,
               epoch: int | None = None) -> tuple[tuple | None, MigrationState | None, object]:
        """(what the router reads: tokens and their log-probabilities), the state, its KV."""
        state = self.core.export(request_id, with_kv, from_block, epoch).result()
        return _parts(state) if state is not None else (None, None, None)

    def import_(self, state: MigrationState, kv_box: list[ray.ObjectRef] | None = None, consumer: str = DEFAULT) -> int:
        """`kv_box` = [ref to the KV blocks] (boxed, so Ray leaves the fetch, and its failure, to us)."""
        if kv_box and state.kv is None and state.num_computed_tokens > 0:
            state.kv = kv_transport.receive(kv_box, f"{state.request_id} on {self.core.replica_id}")
        if state.kv is None:
            state = state.without_kv()
        return self.core.import_(state, consumer).result()

    # ---- live migration ----------------------------------------------------------------------
    def export_blocks(self, request_id: str, first_block: int, min_blocks: int) -> RayStage | None:
        stage = self.core.export_blocks(request_id, first_block, min_blocks).result()
        return _ray_stage(stage) if stage is not None else None

    def stream_blocks(self, request_id: str, first_block: int, epoch: int | None
                      ) -> tuple[RayStage | None, RayExport | None]:
        stage, state = self.core.stream_blocks(request_id, first_block, epoch).result()
        if state is None:
            return (_ray_stage(stage) if stage is not None else None), None
        seen, state, kv = _parts(state)
        return None, RayExport(*seen, ray.put(state), ray.put(kv))

    def reserve(self, request_id: str, num_blocks: int) -> bool:
        return self.core.reserve(request_id, num_blocks).result()

    def import_blocks(self, staged: RayStage) -> bool:
        kv = kv_transport.receive(staged.kv_box, f"{staged.request_id} on {self.core.replica_id}") \
            if staged.num_blocks else None
        if staged.num_blocks and kv is None:
            return False
        stage = KVStage(staged.request_id, staged.first_block, staged.num_blocks, kv, staged.computed_blocks,
                        staged.epoch, staged.block_size)
        return self.core.import_blocks(stage).result()

    def cancel_migration(self, request_id: str) -> int:
        return self.core.cancel_migration(request_id).result()


RemoteReplicaActor = ray.remote(ReplicaActor)


def _parts(state: MigrationState) -> tuple[tuple, MigrationState, object]:
    """An exported request in three: what the router reads (tokens and their log-probabilities),
    the state without its KV, and the KV (each its own object, fetched by the target)."""
    kv, state.kv = state.kv, None
    return (list(state.output_token_ids), state.output_logprobs, state.prompt_logprobs), state, kv


def _ray_stage(stage: KVStage) -> RayStage:
    """A stage as Ray carries it: its blocks in the source's object store, for the target to take."""
    box = kv_transport.send(stage.kv) if stage.num_blocks else None
    return RayStage(stage.request_id, stage.first_block, stage.num_blocks, stage.computed_blocks, stage.epoch,
                    stage.block_size, box)


def actor_name(replica_id: str) -> str:
    return f"shunter-{replica_id}"


def spawn(replica_id: str, engine_config: EngineConfig, engine_factory: str | None = None, num_cpus: float = 1,
          num_gpus: float = 0, large_cache: bool = False, metrics: MetricsAddress | None = None,
          namespace: str | None = None, detached: bool = False,
          placement: tuple[Any, int] | None = None, prefill_only: bool = False) -> ray.actor.ActorHandle:
    """Start one replica actor (restarted by Ray if its process dies, with the same role). Its
    calls are not recorded as task events (as Ray Serve does for its replicas): they are many
    and small, and recording them costs time on the token path. Named `actor_name(replica_id)`
    in `namespace`, where other frontends find it; `detached`: it outlives the process that
    spawned it (so the other frontends keep it when that one dies). `placement`: (placement
    group, bundle index) to run in (restarts return to the same bundle)."""
    strategy = None
    if placement is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(placement_group=placement[0],
                                                    placement_group_bundle_index=placement[1])
    return RemoteReplicaActor.options(
        scheduling_strategy=strategy,
        name=actor_name(replica_id), namespace=namespace, lifetime="detached" if detached else None,
        num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=-1, max_task_retries=0,
        max_concurrency=MAX_CONCURRENCY, enable_task_events=False,
    ).remote(replica_id, engine_config, engine_factory, large_cache, metrics, prefill_only)


class RayReplicaClient:
    """The router's side of a replica actor. `submit` does not wait for its reply (the reply is a
    drain, and joins the others in `poll()`), so a dead replica shows in `poll()`, where the
    router fails its requests over. `consumer`: this router's channel of the replica's outbox
    (one per frontend when several serve from the same replicas)."""

    def __init__(self, replica_id: str, handle: ray.actor.ActorHandle, first_token_wait_s: float = 0.5,
                 consumer: str = DEFAULT) -> None:
        self.replica_id, self.handle = replica_id, handle
        self.first_token_wait_s = first_token_wait_s
        self.consumer = consumer
        self._drains = DrainOrder(replica_id)
        self._polling = False  # a long poll is out

    def _carry(self, ref: ray.ObjectRef, request_id: str | None = None) -> None:
        """Route the reply of a call that brings a drain into `_drains`."""
        ticket = self._drains.started()
        asyncio.wrap_future(ref.future()).add_done_callback(lambda f: self._landed(ticket, f, request_id))

    def _landed(self, ticket: int, reply: asyncio.Future, request_id: str | None) -> None:
        if request_id is None:
            self._polling = False
        error = reply.exception() if not reply.cancelled() else asyncio.CancelledError()
        if error is None:
            self._drains.put(ticket, pickle.loads(reply.result()))
        elif isinstance(error, (RayActorError, ActorUnavailableError)):
            self._drains.dead(ticket, ReplicaDead(f"replica {self.replica_id}: {type(error).__name__}"))
        else:
            log.error("replica %s: %s failed: %r", self.replica_id, "submit" if request_id else "poll", error)
            self._drains.lost(ticket, error, request_id)

    async def _await(self, ref: Any) -> Any:
        try:
            return await ref
        except (RayActorError, ActorUnavailableError) as e:
            raise ReplicaDead(f"replica {self.replica_id}: {type(e).__name__}") from e

    async def info(self) -> ReplicaInfo:
        return await self._await(self.handle.info.remote())

    async def submit(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        packed = _pack((request_id, prompt_token_ids, params, self.first_token_wait_s, self.consumer))
        self._carry(self.handle.submit.remote(packed), request_id)

    async def abort(self, request_id: str) -> None:
        await self._await(self.handle.abort.remote(request_id))

    async def poll(self, max_wait: float) -> PollResult:
        """The next drain, from the long poll or a submit's reply; one long poll is kept out."""
        if not self._polling:
            self._polling = True
            self._carry(self.handle.poll.remote(max_wait, self.consumer))
        return await self._drains.next()

    async def export(self, request_id: str, with_kv: bool = True, from_block: int = 0,
                     epoch: int | None = None) -> RayExport | None:
        tokens_ref, state_ref, kv_ref = self.handle.export.remote(request_id, with_kv, from_block, epoch)
        seen = await self._await(tokens_ref)
        return None if seen is None else RayExport(*seen, state_ref, kv_ref)

    async def export_blocks(self, request_id: str, first_block: int, min_blocks: int) -> RayStage | None:
        return await self._await(self.handle.export_blocks.remote(request_id, first_block, min_blocks))

    async def stream_blocks(self, request_id: str, first_block: int, epoch: int | None
                            ) -> tuple[RayStage | None, RayExport | None]:
        return await self._await(self.handle.stream_blocks.remote(request_id, first_block, epoch))

    async def reserve(self, request_id: str, num_blocks: int) -> bool:
        return await self._await(self.handle.reserve.remote(request_id, num_blocks))

    async def import_blocks(self, staged: StagedBlocks) -> bool:
        if not isinstance(staged, RayStage):
            raise TypeError(f"a Ray replica takes a RayStage, got {type(staged).__name__}")
        return await self._await(self.handle.import_blocks.remote(staged))

    async def cancel_migration(self, request_id: str) -> int:
        return await self._await(self.handle.cancel_migration.remote(request_id))

    async def import_(self, exported: ExportedRequest) -> int:
        if not isinstance(exported, RayExport):
            raise TypeError(f"a Ray replica imports a RayExport, got {type(exported).__name__}")
        return await self._await(self.handle.import_.remote(exported.state_ref, [exported.kv_ref], self.consumer))
