"""One rebalancer for the whole cluster with several frontends on a real redis-server: the
frontend holding the lease plans over every frontend's requests, the owners move their own, and
when the leader dies another frontend takes the lease over; streams keep their tokens."""
from __future__ import annotations

import threading

import pytest

from shunter.replica.block_hash import block_hashes
from shunter.router.core import LocalReplicaClient, RouterConfig
from shunter.router.shared_state import RedisStateStore
from shunter.testing.background import BackgroundServer
from tests.fakes import FakeEngine, reference_output
from tests.router.test_redis_frontends import die, read, request, wait_until

PREFIX = [7] * 64  # every request shares it: prefix-aware routing (fallback off) piles them on its holder
REBALANCE = {"interval_s": 0.2, "abs_threshold": 4, "rel_threshold": 1.1, "max_per_round": 2, "measure": "expected"}


@pytest.fixture
def frontends(redis_db):
    """Two frontends, rebalancing on, over two in-process fake replicas."""
    replicas = [LocalReplicaClient(f"r{i}", lambda: FakeEngine(step_time=0.01)) for i in range(2)]
    servers = []
    for _ in range(2):
        store = RedisStateStore(redis_db.url)
        config = RouterConfig(routing="prefix_aware", poll_wait_s=0.05, rebalance=True, rebalancer_settings=REBALANCE,
                              routing_settings={"abs_threshold": 10**9})
        servers.append(BackgroundServer([c.for_consumer(store.frontend_id) for c in replicas], config, state=store))
    yield servers
    for s in servers:
        if not getattr(s, "dead", False):
            s.close()
    for r in replicas:
        r.kill()


def plant(server) -> None:
    """The prefix cached on one replica, and the router knowing it, before the load arrives (requests
    arriving together before any cache event would spread by load)."""
    read(server.stub.Generate(request(f"plant-{len(server.router.index.holders)}", PREFIX + [1] * 4, 1), timeout=30))
    wait_until(lambda: server.router.index.match(block_hashes(PREFIX, 16)))


def leaders(servers) -> list:
    return [s for s in servers if not getattr(s, "dead", False) and s.router.journal.lease.held]


def stream_all(servers, prompts: dict[str, list[int]], max_tokens: int):
    out: dict[str, list[int]] = {}

    def one(server, rid, prompt):
        out[rid] = read(server.stub.Generate(request(rid, prompt, max_tokens), timeout=60))[0]

    threads = [threading.Thread(target=one, args=(servers[i % len(servers)], rid, p))
               for i, (rid, p) in enumerate(prompts.items())]
    for t in threads:
        t.start()
    return out, threads


def test_the_leader_moves_every_frontends_requests_and_another_takes_over_when_it_dies(frontends):
    servers = frontends
    wait_until(lambda: len(leaders(servers)) == 1)
    leader = leaders(servers)[0]
    follower = next(s for s in servers if s is not leader)
    planned = {id(s): 0 for s in servers}
    for s in servers:  # count who plans
        real = s.router.rebalancer.plan
        s.router.rebalancer.plan = lambda *args, real=real, s=s: planned.__setitem__(id(s), planned[id(s)] + 1) or \
            real(*args)

    # Only the follower streams: every request on the crowded replica is another frontend's, so
    # a move happens only if the leader planned over them and the follower carried it out.
    plant(follower)
    prompts = {f"q{i}": PREFIX + [20 + i] * 4 for i in range(6)}
    out, threads = stream_all([follower], prompts, 400)
    wait_until(lambda: follower.router.counters.migrated >= 1, timeout=30)
    assert not follower.router.journal.lease.held and planned[id(follower)] == 0 < planned[id(leader)]
    assert leader.router.counters.migrated == 0  # it has no request of its own to move

    die(leader)
    leader.dead = True
    wait_until(lambda: follower.router.journal.lease.held, timeout=10)  # the lease expired: the follower leads
    for t in threads:
        t.join(timeout=60)
    assert all(out[rid] == reference_output(p, 400, ignore_eos=True) for rid, p in prompts.items())

    # New load after the take-over: the follower, leading now, rebalances it alone.
    moved = follower.router.counters.migrated
    plant(follower)
    more = {f"n{i}": PREFIX + [60 + i] * 4 for i in range(6)}
    out, threads = stream_all([follower], more, 300)
    wait_until(lambda: follower.router.counters.migrated > moved, timeout=30)
    assert planned[id(follower)] > 0
    for t in threads:
        t.join(timeout=60)
    assert all(out[rid] == reference_output(p, 300, ignore_eos=True) for rid, p in more.items())
