"""The replica registry in Redis: which replica actors serve, so that a frontend started later
(`shunter serve --frontend-only`) attaches to them, and which frontends are alive.

The `shunter serve` that spawns the replicas registers them (`register`); each frontend's store
writes it again after a Redis outage. Liveness is in keys with a TTL that every frontend's store
refreshes each second (`redis_keys.py`): a replica's holds its latest load report while some
frontend polls it, a frontend's says it is up. These helpers are synchronous: `shunter serve`
calls them before its event loop starts and after it ends.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from shunter.router.shared_state import redis_keys as keys
from shunter.router.shared_state.redis_url import RedisURL


@dataclass(frozen=True)
class ReplicaEntry:
    replica_id: str
    actor: str  # its Ray actor's name ...
    namespace: str  # ... in this Ray namespace
    model: str  # what it serves (for `shunter status`)

    def command(self) -> tuple[str, ...]:
        return ("HSET", keys.REPLICAS, self.replica_id, json.dumps(asdict(self)))


def _client(url: RedisURL) -> Any:
    import redis

    return redis.Redis(**url.client_options())


def register(url: RedisURL, entries: list[ReplicaEntry]) -> None:
    with _client(url) as client:
        for entry in entries:
            client.execute_command(*entry.command())


def unregister(url: RedisURL, replica_ids: list[str]) -> None:
    with _client(url) as client:
        if replica_ids:
            client.hdel(keys.REPLICAS, *replica_ids)
            client.delete(*(keys.prefix(r, tier) for r in replica_ids for tier in keys.TIERS),
                          *(keys.replica(r) for r in replica_ids))


def registered(url: RedisURL) -> list[ReplicaEntry]:
    """The registered replicas, by id."""
    with _client(url) as client:
        raw = client.hgetall(keys.REPLICAS)
    return sorted((ReplicaEntry(**json.loads(v)) for v in raw.values()), key=lambda e: e.replica_id)


def last_reports(url: RedisURL, replica_ids: list[str]) -> dict[str, dict | None]:
    """Each replica's latest load report as some frontend saw it; None once no frontend has
    polled it for the heartbeat TTL."""
    with _client(url) as client:
        values = client.mget([keys.replica(r) for r in replica_ids]) if replica_ids else []
    return {r: json.loads(v) if v is not None else None for r, v in zip(replica_ids, values)}


def live_frontends(url: RedisURL) -> list[str]:
    """Frontends whose heartbeat has not expired."""
    with _client(url) as client:
        names = list(client.scan_iter(match=keys.frontend("*"), count=1000))
    return sorted(n.decode().removeprefix(keys.frontend("")) for n in names)
