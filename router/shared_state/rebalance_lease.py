"""One rebalancer for the whole cluster when several frontends share the replicas.

Each frontend knows only its own requests, so a rebalancer per frontend plans over part of the
picture and two may move requests off the same crowded replica at once. With Redis, the frontend
holding a lease (`shunter:rebalancer`, a key with its id and a TTL, renewed every round) is the
one that plans: every frontend writes the loads of its running requests and its migrations in
flight (`shunter:loads:<id>`, with the same TTL), and the leader plans over all of them. A move
of another frontend's request is sent to that frontend on the bus, which migrates it as its own,
so the stream's owner coordinates the move and its client's stream follows the request; the
leader counts the moves it asked for as in flight until the owner's own report says so. A leader that dies stops
renewing; after the TTL another frontend takes the lease at its next round.
"""
from __future__ import annotations

import json
from typing import Any

from shunter.router.routing import LoadReport, RequestLoad
from shunter.router.shared_state import redis_keys as keys

LEASE_TTL_MS = 3_000
# Take the lease if it is free, or extend it if it is ours: 1 when held after the call.
_RENEW = ("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end "
          "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end return 0")
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class RebalanceLease:
    def __init__(self, client: Any, frontend_id: str, ttl_ms: int = LEASE_TTL_MS) -> None:
        self.client, self.frontend_id, self.ttl_ms = client, frontend_id, ttl_ms
        self.held = False

    async def renew(self) -> bool:
        """Take the lease, or keep it: whether this frontend leads the rebalancing now."""
        self.held = bool(await self.client.eval(_RENEW, 1, keys.REBALANCER, self.frontend_id, self.ttl_ms))
        return self.held

    async def release(self) -> None:
        if self.held:
            await self.client.eval(_RELEASE, 1, keys.REBALANCER, self.frontend_id)
            self.held = False


def loads_command(frontend_id: str, reports: list[LoadReport], moving: dict[str, tuple[str, str]],
                  ttl_ms: int = LEASE_TTL_MS) -> tuple:
    """The SET that shares this frontend's running requests (per replica) and moves in flight."""
    rows = [[r.replica_id, q.request_id, q.blocks, q.decoding, q.held_blocks] for r in reports for q in r.requests]
    return ("SET", keys.loads(frontend_id), json.dumps({"requests": rows, "moving": moving}), "PX", ttl_ms)


async def cluster_view(client: Any, own_id: str, reports: list[LoadReport], moving: dict[str, tuple[str, str]]
                       ) -> tuple[list[LoadReport], dict[str, tuple[str, str]]]:
    """`reports` (this frontend's requests on each replica) with every other frontend's requests
    added, each marked with its owner; and every frontend's moves in flight."""
    by_replica = {r.replica_id: r for r in reports}
    in_flight = dict(moving)
    names = [name async for name in client.scan_iter(match=keys.loads("*"), count=100)]
    values = await client.mget(names) if names else []
    for name, value in zip(names, values):
        owner = name.decode().removeprefix(keys.loads(""))
        if owner == own_id or value is None:
            continue
        shared = json.loads(value)
        for replica_id, request_id, blocks, decoding, held in shared["requests"]:
            report = by_replica.get(replica_id)
            if report is not None:
                report.requests.append(RequestLoad(request_id, blocks, decoding, held, owner=owner))
        in_flight.update({rid: (src, dst) for rid, (src, dst) in shared["moving"].items()})
    return reports, in_flight
