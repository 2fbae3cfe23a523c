"""Cache-size specialization through the router: which replicas hold the large KV pool, and
where it shows (load report, ClusterStatus, after a restart)."""
from __future__ import annotations

import asyncio

from shunter.proto import generation_pb2 as pb
from shunter.router.replica_client import LocalReplicaClient
from shunter.router.router import Router, RouterConfig
from tests.fakes import FakeEngine


def fake_clients(large: set[str], n: int = 2) -> list[LocalReplicaClient]:
    return [LocalReplicaClient(f"r{i}", lambda: FakeEngine(step_time=0.002), large_cache=f"r{i}" in large)
            for i in range(n)]


def test_cluster_status_says_which_replicas_hold_the_large_cache(serve):
    server = serve(fake_clients({"r1"}))
    assert [r.large_cache for r in server.router.reports()] == [False, True]
    status = server.stub.ClusterStatus(pb.ClusterStatusRequest())
    assert [(r.replica_id, r.large_cache) for r in status.replicas] == [("r0", False), ("r1", True)]


def test_a_restarted_replica_rejoins_with_its_role():
    async def main():
        clients = fake_clients({"r0"})
        router = Router(clients, RouterConfig(poll_wait_s=0.05, rebalance=False))
        await router.start()
        clients[0].kill()
        asyncio.get_running_loop().call_later(0.2, clients[0].restart)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if router.counters.rejoined:
                break
        assert router.counters.rejoined == 1
        assert [r.large_cache for r in router.reports()] == [True, False]
        await router.stop()
        for c in clients:
            c.kill()

    asyncio.run(asyncio.wait_for(main(), 30))
