"""`RedisStateStore` (`--state redis://...`): the journal and routing state kept in this process,
mirrored to Redis and shared with the other frontends serving from the same replicas.

Nothing on the token path waits for Redis. The router's calls (`add`, `placed`, `sent`,
`remove`, `reported`) update local state as `MemoryStateStore` does and queue commands that
`RedisWriter` sends in one pipeline per batch. What the other frontends do arrives on one
pub/sub channel: their placements (each adds to the replica's pending load here until a report
of the replica counts it: `remote_pending.py`) and requests to hand a stream over. Every routing
decision reads local state only: load and cache events come to every frontend straight from the
replicas (each has its own channel of every replica's outbox), so Redis adds no round trip to a
decision. What Redis adds is memory that outlives a frontend: the journal a client resumes from,
the prefix index a frontend started later begins with, and the registry and heartbeats
(`replica_registry.py`). Key layout: `redis_keys.py`.
"""
from __future__ import annotations

import array
import asyncio
import dataclasses
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shunter.errors import ReplicaUnavailable
from shunter.replica.engine_protocol import CacheEvent
from shunter.replica.outbox import PollResult
from shunter.router.shared_state import redis_keys as keys
from shunter.router.routing import LoadReport
from shunter.router.shared_state.redis_url import RedisURL, StateStoreError, explain
from shunter.router.shared_state.rebalance_lease import RebalanceLease, cluster_view, loads_command
from shunter.router.shared_state.redis_writer import Command, RedisWriter
from shunter.router.shared_state.remote_pending import RemotePending
from shunter.router.shared_state.replica_registry import ReplicaEntry
from shunter.router.core import (
    ENDED,
    FINISHED,
    LIVE,
    MAX_RETAINED,
    RETAIN_S,
    JournalEntry,
    JournalRecord,
    MemoryStateStore,
    packed,
    record_of,
)
from shunter.sampling_params import SamplingParams

if TYPE_CHECKING:
    from shunter.router.core import Router

log = logging.getLogger(__name__)
HEARTBEAT_S = 1.0
RELEASE_WAIT_S = 5.0  # how long a resume waits for a live stream's frontend to hand it over (or be found dead)
ASKED_S = 1.0  # a move asked of another frontend counts as in flight this long, or until its owner reports it


class RedisStateStore(MemoryStateStore):
    def __init__(self, url: RedisURL, registry: Sequence[ReplicaEntry] = (), retain_s: float = RETAIN_S,
                 max_retained: int = MAX_RETAINED, prefix_cap: int = keys.PREFIX_CAP,
                 heartbeat_s: float = HEARTBEAT_S, release_wait_s: float = RELEASE_WAIT_S) -> None:
        """`registry`: the replicas this frontend serves from, written again after an outage."""
        super().__init__(retain_s, max_retained)
        self.url, self.registry = url, list(registry)
        self.frontend_id = f"fe-{uuid.uuid4().hex[:12]}"  # its channel on every replica
        self.prefix_cap, self.heartbeat_s, self.release_wait_s = prefix_cap, heartbeat_s, release_wait_s
        self.client: Any = None
        self.writer: RedisWriter | None = None
        self._router: Router | None = None
        self._tasks: list[asyncio.Task] = []
        self._ttl_set: dict[str, float] = {}  # live request id (in Redis) -> when its TTL was last set
        self._own_placements = f"placed {self.frontend_id} ".encode()
        self._trim: set[str] = set()  # replicas whose prefix set grew since the last trim
        self._down: set[str] = set()  # replicas seen down (their prefix set was dropped)
        self.remote = RemotePending()  # what the other frontends placed
        self.lease: RebalanceLease | None = None  # whether this frontend's rebalancer plans for all
        self._asked: dict[str, tuple[str, str, float]] = {}  # moves asked of other frontends: (source, target, when)

    # ---- life --------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect and PING; StateStoreError saying why not (never a retry loop at start-up)."""
        if self.client is not None:
            return
        client = aioredis.Redis(**self.url.client_options())
        try:
            await client.ping()
        except (RedisError, OSError) as e:
            await client.aclose()
            raise StateStoreError(explain(self.url, e)) from None
        self.client = client
        self.writer = RedisWriter(client, str(self.url), self._resync)
        self.lease = RebalanceLease(client, self.frontend_id)

    async def start(self, router: Router) -> None:
        self._router = router
        await self.connect()
        for replica_id in router.slots:  # begin with what the replicas hold, as other frontends learned it
            for tier in keys.TIERS:
                hashes = await self.client.zrange(keys.prefix(replica_id, tier), 0, -1)
                router.index.apply(replica_id, [CacheEvent("stored", int(h), tier) for h in hashes])
        self.writer.start()
        self.writer.put_all(e.command() for e in self.registry)
        self._tasks = [asyncio.create_task(self._listen(), name="redis-listen"),
                       asyncio.create_task(self._heartbeat(), name="redis-heartbeat")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.lease is not None:
            try:
                await self.lease.release()  # another frontend takes over at its next round, not after the TTL
            except (RedisError, OSError):
                pass
        if self.writer is not None:
            self.writer.put("DEL", keys.frontend(self.frontend_id))
            await self.writer.stop()
        if self.client is not None:
            await self.client.aclose()

    # ---- the journal (the router's calls: local, then queued for Redis) ---------------------------
    # A request's record goes to Redis with its first placement (so it names its replica), its
    # tokens as they stream, its end when its stream ends: one script call each, a few per request.
    def placed(self, entry: JournalEntry, blocks: int) -> None:
        """Journal where it runs, and tell the other frontends (the same script call)."""
        rid = entry.request_id
        message = f"placed {self.frontend_id} {entry.replica_id} {blocks} {rid}"
        if rid in self._ttl_set:  # placed again (failover)
            self.writer.put("EVAL", _MOVED, 1, keys.request(rid), entry.replica_id, keys.BUS, message)
        else:
            self._ttl_set[rid] = time.monotonic()
            self.writer.put_all(self._record_commands(record_of(entry, self.frontend_id), LIVE, message))

    def sent(self, entry: JournalEntry, tokens: list[int]) -> None:
        self.writer.append(keys.tokens(entry.request_id), packed(tokens).tobytes())

    def remove(self, request_id: str) -> None:
        entry = self.entries.get(request_id)
        super().remove(request_id)
        if entry is None or self._ttl_set.pop(request_id, None) is None:
            return  # never placed: nothing of it in Redis
        state = FINISHED if entry.finish_reason is not None else ENDED
        self.writer.put("EVAL", _END, 2, keys.request(request_id), keys.tokens(request_id), int(self.retain_s * 1000),
                        state, entry.finish_reason or "", len(entry.sent), entry.num_cached_tokens,
                        entry.replica_id or "")

    def _record_commands(self, record: JournalRecord, state: str, message: str = "",
                         if_absent: bool = False) -> list[Command]:
        """Write a whole record: a new request or an adopted one (and publish `message`, its
        placement), or after an outage (`if_absent`, for ended ones: another frontend may have
        adopted the request since, and its record wins)."""
        fields = ("prompt", packed(record.prompt_token_ids).tobytes(), "params", json.dumps(record.params.as_dict()),
                  "owner", record.owner, "state", state, "finish", record.finish_reason or "", "n", len(record.tokens),
                  "cached", record.num_cached_tokens, "replica", record.replica_id or "")
        return [("EVAL", _WRITE_IF_ABSENT if if_absent else _WRITE, 3, keys.request(record.request_id),
                 keys.tokens(record.request_id), keys.BUS, int(self.retain_s * 1000), packed(record.tokens).tobytes(),
                 message, *fields)]

    # ---- what the replicas report ---------------------------------------------------------------
    def reported(self, report: LoadReport, result: PollResult, fresh: bool) -> None:
        self.remote.reported(report, result.taken, fresh)
        if result.events:
            self._mirror(report.replica_id, result.events)

    def _mirror(self, replica_id: str, events: list[CacheEvent]) -> None:
        """The prefix index, in order: runs of stores as one ZADD (scored by time: the oldest are
        evicted first past `prefix_cap`), runs of evictions as one ZREM; a set per tier."""
        now, stored = time.time() * 1000, False
        run_kind, run = None, []
        for event in [*events, None]:
            kind = (event.kind, event.tier) if event is not None else None
            if kind != run_kind and run:
                key = keys.prefix(replica_id, run_kind[1])
                self.writer.put(*(("ZADD", key, *[x for h in run for x in (now, h)]) if run_kind[0] == "stored"
                                  else ("ZREM", key, *run)))
                stored |= run_kind[0] == "stored"
                run = []
            if event is not None:
                run_kind = kind
                run.append(event.block_hash)
        if stored:
            self._trim.add(replica_id)

    # ---- resuming what another frontend streamed ----------------------------------------------
    async def lookup(self, request_id: str) -> JournalRecord | None:
        try:
            record = await self._read(request_id)
        except (RedisError, OSError) as e:
            self.writer.down(e)
            record = await super().lookup(request_id)
            if record is None:
                raise ReplicaUnavailable(f"the state store is unreachable, so request_id {request_id!r} cannot be "
                                         "looked up; try again") from None
            return record
        if record is None or (record.state == LIVE and record.owner == self.frontend_id):
            # Not in Redis (lost in an outage), or its end here is still on its way there: ours is newer.
            return await super().lookup(request_id) or record
        return record

    async def claim(self, record: JournalRecord) -> JournalRecord:
        """While another frontend that is alive streams it, ask it to let go (over the bus) and
        wait until its record says it did; a frontend whose heartbeat expired is gone."""
        rid, loop = record.request_id, asyncio.get_running_loop()
        deadline = loop.time() + self.release_wait_s
        asked = ""
        try:
            while record.state == LIVE and record.owner != self.frontend_id:
                if not await self.client.exists(keys.frontend(record.owner)):
                    return record  # the caller aborts the copy its replica may still run
                if asked != record.owner:
                    asked = record.owner
                    await self.client.publish(keys.BUS, f"release {asked} {rid}")
                if loop.time() > deadline:
                    raise ReplicaUnavailable(f"request {rid!r} is streaming through frontend {record.owner}, which "
                                             f"did not hand it over in {self.release_wait_s:g} s")
                await asyncio.sleep(0.02)
                record = await self._read(rid) or dataclasses.replace(record, state=ENDED)  # it expired meanwhile
        except (RedisError, OSError) as e:
            self.writer.down(e)
            raise ReplicaUnavailable(f"the state store is unreachable; cannot take over request {rid!r}") from None
        return record

    async def _read(self, request_id: str) -> JournalRecord | None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(keys.request(request_id))
        pipe.get(keys.tokens(request_id))
        fields, raw_tokens = await pipe.execute()
        if not fields or b"params" not in fields:
            return None
        text = {k.decode(): v for k, v in fields.items()}
        prompt, tokens = array.array("I"), array.array("I")
        prompt.frombytes(text["prompt"])
        tokens.frombytes(raw_tokens or b"")
        state = text["state"].decode()
        if state != LIVE:  # a stream cut at a stop string journaled tokens past its end
            del tokens[int(text["n"]):]
        return JournalRecord(request_id, prompt, SamplingParams(**json.loads(text["params"])), tokens, state,
                             text["finish"].decode() or None, int(text["cached"]), text["owner"].decode(),
                             text["replica"].decode() or None)

    # ---- one rebalancer for the cluster (`rebalance_lease.py`) -------------------------------------
    async def rebalance_view(self, router: Router) -> tuple[list[LoadReport], dict[str, tuple[str, str]]] | None:
        """Share our requests' loads and moves; if we hold the lease, every frontend's (and the
        moves we asked for, until their owners report them); else None. With Redis unreachable,
        our own requests (as a lone frontend would)."""
        reports, moving = router.reports(with_requests=True), dict(router.migrations_in_flight)
        self.writer.put(*loads_command(self.frontend_id, reports, moving))
        try:
            if not await self.lease.renew():
                return None
            reports, in_flight = await cluster_view(self.client, self.frontend_id, reports, moving)
        except (RedisError, OSError) as e:
            self.writer.down(e)
            return reports, moving
        now = time.monotonic()
        self._asked = {rid: move for rid, move in self._asked.items() if now - move[2] < ASKED_S and rid not in in_flight}
        return reports, {**in_flight, **{rid: (src, dst) for rid, (src, dst, _) in self._asked.items()}}

    def ask_to_migrate(self, owner: str, request_id: str, source: str, target: str) -> None:
        self._asked[request_id] = (source, target, time.monotonic())
        self.writer.put("PUBLISH", keys.BUS, f"migrate {owner} {request_id} {target}")

    # ---- what the other frontends say -----------------------------------------------------------
    async def _listen(self) -> None:
        delay = 0.25
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.BUS)
                delay = 0.25
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._on_message(message["data"])
            except (RedisError, OSError) as e:
                self.writer.down(e)
            finally:
                await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)

    def _on_message(self, data: bytes) -> None:
        """`placed <frontend> <replica> <blocks> <request id>`, `release <frontend> <request id>` or
        `migrate <frontend> <request id> <target>`."""
        from shunter.router.core import release

        if data.startswith(self._own_placements):
            return
        try:
            op, frontend, rest = data.decode().split(" ", 2)
            router = self._router
            if op == "placed":
                replica_id, blocks, request_id = rest.split(" ", 2)
                slot = router.slots.get(replica_id)
                if slot is not None and slot.healthy:
                    self.remote.heard(slot.report, request_id, int(blocks))
                    router.loads.update(slot.report)
            elif op == "migrate" and frontend == self.frontend_id:  # the leader's plan moves our request
                request_id, target = rest.split(" ", 1)
                router._spawn(router.migrate(request_id, target), f"migrate {request_id}")
            elif op == "release" and frontend == self.frontend_id:
                if not release(router, rest):  # not live here (its end was never journaled): say so
                    self.writer.put("EVAL", _END_IF_OWNER, 1, keys.request(rest), self.frontend_id)
        except ValueError:
            log.error("state store: ignored a message on %s that is not ours: %r", keys.BUS, data[:200])

    # ---- heartbeats, TTLs, repair --------------------------------------------------------------
    async def _heartbeat(self) -> None:
        while True:
            self._beat()
            await asyncio.sleep(self.heartbeat_s)

    def _beat(self) -> None:
        put, now = self.writer.put, time.monotonic()
        put("SET", keys.frontend(self.frontend_id), json.dumps({"since": time.time()}), "PX", keys.FRONTEND_TTL_MS)
        for replica_id, slot in self._router.slots.items():
            if slot.healthy:
                self._down.discard(replica_id)
                report = {k: v for k, v in dataclasses.asdict(slot.report).items() if k != "requests"}
                put("SET", keys.replica(replica_id), json.dumps(report), "PX", keys.REPLICA_TTL_MS)
            elif replica_id not in self._down:  # its cache died with it
                self._down.add(replica_id)
                put("DEL", *(keys.prefix(replica_id, tier) for tier in keys.TIERS))
        ttl = int(self.retain_s * 1000)
        for replica_id in self._trim:  # bounded once a second: between trims a set may pass the cap a little
            for tier in keys.TIERS:
                put("ZREMRANGEBYRANK", keys.prefix(replica_id, tier), 0, -self.prefix_cap - 1)
        self._trim.clear()
        for request_id, since in list(self._ttl_set.items()):
            if now - since > self.retain_s / 3:
                self._ttl_set[request_id] = now
                put("PEXPIRE", keys.request(request_id), ttl)
                put("PEXPIRE", keys.tokens(request_id), ttl)

    def _resync(self) -> list[Command]:
        """Everything this frontend knows, as commands: after an outage Redis may have lost it all."""
        ops: list[Command] = [e.command() for e in self.registry]
        for entry in self.entries.values():
            self._ttl_set.setdefault(entry.request_id, time.monotonic())
            ops += self._record_commands(record_of(entry, self.frontend_id), LIVE)
        for record in self.retained():
            ops += self._record_commands(record, record.state, if_absent=True)
        ops += [("DEL", *(keys.prefix(replica_id, tier) for tier in keys.TIERS)) for replica_id in self._down]
        index = self._router.index
        for tier, by_replica in (("device", index.by_replica), ("cpu", index.cpu_by_replica)):
            for replica_id, hashes in by_replica.items():
                key, now, members = keys.prefix(replica_id, tier), time.time() * 1000, list(hashes)
                ops.append(("DEL", key))
                for i in range(0, len(members), 1000):
                    ops.append(("ZADD", key, *[x for h in members[i:i + 1000] for x in (now, h)]))
                ops.append(("ZREMRANGEBYRANK", key, 0, -self.prefix_cap - 1))
        return ops


# A record: KEYS = its hash, its tokens, the bus; ARGV = TTL (ms), packed tokens, a message to
# publish (or ""), then the hash's fields.
_WRITE = ("redis.call('DEL', KEYS[1]); redis.call('HSET', KEYS[1], unpack(ARGV, 4)); "
          "redis.call('PEXPIRE', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1]); "
          "if ARGV[3] ~= '' then redis.call('PUBLISH', KEYS[3], ARGV[3]) end")
# Placed again: KEYS = its hash; ARGV = replica, bus, message.
_MOVED = "redis.call('HSET', KEYS[1], 'replica', ARGV[1]); redis.call('PUBLISH', ARGV[2], ARGV[3])"
_WRITE_IF_ABSENT = f"if redis.call('EXISTS', KEYS[1]) == 0 then {_WRITE} end"
# Its end: ARGV = TTL (ms), state, finish reason, tokens, cached tokens, replica; the TTL counts from now.
_END = ("redis.call('HSET', KEYS[1], 'state', ARGV[2], 'finish', ARGV[3], 'n', ARGV[4], 'cached', ARGV[5], "
        "'replica', ARGV[6]); redis.call('PEXPIRE', KEYS[1], ARGV[1]); redis.call('PEXPIRE', KEYS[2], ARGV[1])")
# Mark a live record ended, if it is still this frontend's (a hand-over asked of a frontend that
# no longer has the stream, whose end was never journaled).
_END_IF_OWNER = ("if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'state') == "
                 f"'{LIVE}' then redis.call('HSET', KEYS[1], 'state', 'ended') end")
