"""gRPC end to end over Ray actor replicas on loopback: stream, migrate mid-stream, kill a replica.

The replicas run the fake engine (a deterministic 'model'), so every stream has a known answer
whatever replica, migration or failover served it. One module-scoped server keeps Ray's cost low.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import pytest

from shunter.proto import generation_pb2 as pb
from shunter.replica.engine_config import EngineConfig
from shunter.router.core import RouterConfig
from shunter.testing.background import BackgroundServer
from shunter.testing.fake_engine import FACTORY
from tests.fakes import reference_output

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(ray_cluster):
    from shunter.router.cluster import RayReplicaClient, spawn

    config = EngineConfig(model="fake:ids:10")
    clients = [RayReplicaClient(f"r{i}", spawn(f"r{i}", config, FACTORY, num_cpus=1))
               for i in range(2)]
    s = BackgroundServer(clients, RouterConfig(routing="round_robin", poll_wait_s=0.2, rebalance=False))
    yield s
    s.close()
    for c in clients:
        ray_cluster.kill(c.handle, no_restart=True)


@pytest.fixture(scope="module")
def slow_server(ray_cluster):
    """Steps of 300 ms: a submit's reply waits (parked in the actor) for its first token."""
    from shunter.router.cluster import RayReplicaClient, spawn

    config = EngineConfig(model="fake:ids:300")
    clients = [RayReplicaClient(f"s{i}", spawn(f"s{i}", config, FACTORY, num_cpus=1)) for i in range(2)]
    s = BackgroundServer(clients, RouterConfig(routing="round_robin", poll_wait_s=0.2, rebalance=False))
    yield s
    s.close()
    for c in clients:
        ray_cluster.kill(c.handle, no_restart=True)


def request(prompt: list[int], max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=prompt),
                              sampling=pb.SamplingOptions(max_tokens=max_tokens, ignore_eos=True, temperature=0))


def stream(server, prompt, max_tokens, on_chunk=None):
    tokens, replicas = [], []
    for chunk in server.stub.Generate(request(prompt, max_tokens), timeout=60):
        tokens += chunk.token_ids
        replicas.append(chunk.replica_id)
        if on_chunk:
            on_chunk(chunk, len(tokens))
    return tokens, replicas


def test_streams_over_two_ray_replicas(server):
    results = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, stream(server, [i + 1] * 20, 20)))
               for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for i in range(4):
        assert results[i][0] == reference_output([i + 1] * 20, 20, ignore_eos=True)
    assert {r for _, reps in results.values() for r in reps} == {"r0", "r1"}


def test_migration_mid_stream_keeps_the_tokens(server):
    moved = []

    def on_chunk(chunk, n):
        if n >= 10 and not moved:
            target = "r1" if chunk.replica_id == "r0" else "r0"
            moved.append(server.call(server.router.migrate(chunk.request_id, target)))

    before, recomputed = server.router.counters.migrated, server.router.counters.migrated_recomputed
    tokens, replicas = stream(server, [9] * 30, 60, on_chunk)
    assert tokens == reference_output([9] * 30, 60, ignore_eos=True)
    assert moved == [True] and server.router.counters.migrated == before + 1
    assert server.router.counters.migrated_recomputed == recomputed  # the KV came with it
    assert len(set(replicas)) == 2


def test_kv_lost_in_transfer_the_target_recomputes(server, ray_cluster, monkeypatch):
    """The KV object cannot be fetched by the target (here: its producer failed): the target
    imports the state without it and recomputes; the stream is unbroken."""

    @ray_cluster.remote
    def lost_kv():
        raise RuntimeError("object lost")

    def on_chunk(chunk, n):
        if n >= 10 and not moved:
            source = server.router.slots[chunk.replica_id].client
            real_export = source.export

            async def export(request_id, *args):
                exported = await real_export(request_id, *args)
                return dataclasses.replace(exported, kv_ref=lost_kv.remote())

            monkeypatch.setattr(source, "export", export)
            target = "r1" if chunk.replica_id == "r0" else "r0"
            moved.append(server.call(server.router.migrate(chunk.request_id, target)))
            monkeypatch.undo()

    moved: list[bool] = []
    recomputed = server.router.counters.migrated_recomputed
    tokens, replicas = stream(server, [8] * 30, 60, on_chunk)
    assert tokens == reference_output([8] * 30, 60, ignore_eos=True)
    assert moved == [True] and len(set(replicas)) == 2
    assert server.router.counters.migrated_recomputed == recomputed + 1


def test_killing_a_replica_mid_stream_every_stream_completes(server):
    results, killed = {}, []  # (replica id, its pid): the one serving stream 0 when killed

    def on_chunk(chunk, n):
        if n >= 8 and not killed:  # the replica this stream is on, whichever routing chose
            pid = server.router.slots[chunk.replica_id].info.pid
            killed.append((chunk.replica_id, pid))
            os.kill(pid, signal.SIGKILL)

    prompts = [[i + 20] * 25 for i in range(4)]
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, stream(server, prompts[i], 50, on_chunk if i == 0 else None))) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert killed
    for i, p in enumerate(prompts):
        assert results[i][0] == reference_output(p, 50, ignore_eos=True), i
    assert server.router.counters.failed_over >= 1
    replica_id, pid = killed[0]
    victim = server.router.slots[replica_id]
    deadline = time.time() + 60
    while not victim.healthy and time.time() < deadline:
        time.sleep(0.2)
    assert victim.healthy and victim.info.pid != pid  # restarted by Ray and rejoined
    tokens, _ = stream(server, [3] * 10, 5)
    assert tokens == reference_output([3] * 10, 5, ignore_eos=True)


def test_a_replica_killed_before_the_first_token_fails_over(slow_server):
    """The kill lands while the submit's reply (which would carry the first token) is still out:
    the replica shows as dead all the same and the stream completes elsewhere."""
    router = slow_server.router
    before = router.counters.failed_over
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("out", stream(slow_server, [5] * 12, 3)))
    thread.start()
    deadline = time.time() + 30
    while not router.journal.entries and time.time() < deadline:
        time.sleep(0.005)
    entry = next(iter(router.journal.entries.values()))
    while entry.replica_id is None and time.time() < deadline:
        time.sleep(0.001)
    victim = router.slots[entry.replica_id]
    os.kill(victim.info.pid, signal.SIGKILL)
    thread.join(timeout=60)
    tokens, replicas = result["out"]
    assert tokens == reference_output([5] * 12, 3, ignore_eos=True)
    assert router.counters.failed_over == before + 1
    assert victim.client.replica_id not in replicas
