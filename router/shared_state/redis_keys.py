"""Where the shared state lives in Redis: every key and channel name, in one place.

- `shunter:replicas` (hash): replica id -> JSON `ReplicaEntry` (its Ray actor, namespace,
  model); kept until the last frontend stops the replicas.
- `shunter:replica:<id>` (string): the replica's latest load report (JSON), its heartbeat;
  expires after `REPLICA_TTL_MS`, refreshed each second by every frontend polling it.
- `shunter:frontend:<id>` (string): a frontend's heartbeat; `FRONTEND_TTL_MS`, refreshed each second.
- `shunter:prefix:<id>` (sorted set): block hashes the replica holds, scored by when they were
  stored (ms); past `PREFIX_CAP` the oldest go; dropped while the replica is down.
- `shunter:prefix_cpu:<id>` (sorted set): the same for the blocks in its CPU tier (`--cpu-kv-gib`).
- `shunter:req:<id>` (hash): a request's journal: prompt, params, owner frontend, replica,
  state, finish reason, cached tokens, n (tokens, once ended); the journal TTL, refreshed
  while it streams and counted again from its end.
- `shunter:tok:<id>` (string): the tokens it streamed, uint32 each, appended per batch; as its `req`.
- `shunter:rebalancer` (string): the id of the frontend whose rebalancer plans for the whole
  cluster (`rebalance_lease.py`); `LEASE_TTL_MS`, renewed each round by its holder.
- `shunter:loads:<id>` (string): a frontend's running requests per replica (JSON), for the
  leader's plan; as the lease's TTL, rewritten each round.
- `shunter:bus` (pub/sub): placements (for the others' pending load), hand-over requests, and the
  leader's moves of other frontends' requests.
"""
from __future__ import annotations

ROOT = "shunter:"
REPLICAS = ROOT + "replicas"
BUS = ROOT + "bus"
REBALANCER = ROOT + "rebalancer"
REPLICA_TTL_MS = 10_000
FRONTEND_TTL_MS = 3_000
PREFIX_CAP = 65_536  # block hashes per replica: 1M tokens of prefix at 16 tokens a block


def replica(replica_id: str) -> str:
    return f"{ROOT}replica:{replica_id}"


def frontend(frontend_id: str) -> str:
    return f"{ROOT}frontend:{frontend_id}"


TIERS = ("device", "cpu")


def prefix(replica_id: str, tier: str = "device") -> str:
    return f"{ROOT}prefix:{replica_id}" if tier == "device" else f"{ROOT}prefix_{tier}:{replica_id}"


def request(request_id: str) -> str:
    return f"{ROOT}req:{request_id}"


def tokens(request_id: str) -> str:
    return f"{ROOT}tok:{request_id}"


def loads(frontend_id: str) -> str:
    return f"{ROOT}loads:{frontend_id}"
