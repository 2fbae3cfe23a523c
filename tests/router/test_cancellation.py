"""A client that cancels, disconnects or runs past its deadline frees everything it held.

One test per state the request is in when its client goes: running, waiting in the engine,
swapped out, queued for admission, in the middle of a migration. Each ends with the cluster
idle: no KV block in use, nothing running, waiting or swapped, nothing in flight or queued.
The real engine (random:tiny) runs in-process, so KV blocks are really counted; its steps are
paced to 10 ms so that a request left running would still hold its blocks long after the few
hundred milliseconds the cluster gets to become idle.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import grpc
import pytest

from shunter.proto import generation_pb2 as pb
from shunter.proto import generation_pb2_grpc as pb_grpc
from shunter.router.core import LocalReplicaClient
from shunter.router.core import RouterConfig
from tests.router.prometheus_page import until
from tests.router.test_overload import greq, tiny_config

PROMPT = [(13 * j) % 500 + 3 for j in range(40)]
STEP_S = 0.01
IDLE_S = 3.0  # far less than any request here takes to finish on its own (>= 100 steps)


class Paced:
    """The engine, with every step at least STEP_S long."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def __getattr__(self, name: str):
        return getattr(self.engine, name)

    def step(self):
        time.sleep(STEP_S)
        return self.engine.step()


def paced(config, name: str = "r0", kind: type[LocalReplicaClient] = LocalReplicaClient) -> LocalReplicaClient:
    from shunter.replica.engine import Engine

    return kind(name, lambda: Paced(Engine(config)))


def assert_idle(server, timeout: float = IDLE_S) -> None:
    """Everything freed: every replica reports no block in use and no request; the router holds none."""
    def idle() -> bool:
        s = server.stub.ClusterStatus(pb.ClusterStatusRequest())
        return (s.counters.in_flight, s.counters.queued) == (0, 0) and all(
            (r.kv_blocks_in_use, r.num_running, r.num_waiting, r.num_swapped) == (0, 0, 0, 0) for r in s.replicas)

    until(idle, timeout)


def replica_state(server) -> pb.ReplicaStatus:
    return server.stub.ClusterStatus(pb.ClusterStatusRequest()).replicas[0]


def streams(server, n: int, max_tokens: int = 1500, **kw) -> list:
    return [server.stub.Generate(greq(max_tokens, [p + i for p in PROMPT]), **kw) for i in range(n)]


def test_cancel_while_running_frees_the_blocks(serve):
    server = serve([paced(tiny_config(128))])
    call = streams(server, 1)[0]
    next(call)
    assert replica_state(server).kv_blocks_in_use > 0
    call.cancel()
    assert_idle(server)


def test_deadline_while_running_is_deadline_exceeded_and_frees_the_blocks(serve):
    server = serve([paced(tiny_config(128))])
    with pytest.raises(grpc.RpcError) as err:
        list(streams(server, 1, max_tokens=1500, timeout=1.0)[0])
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_idle(server)


def test_disconnect_frees_the_blocks(serve):
    server = serve([paced(tiny_config(128))])
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    call = pb_grpc.GenerationStub(channel).Generate(greq(1500, PROMPT))
    next(call)
    channel.close()  # the connection goes, with no cancel of its own
    assert_idle(server)


def test_cancel_while_waiting_in_the_engine(serve):
    server = serve([paced(dataclasses.replace(tiny_config(128), max_num_seqs=1))])
    first = streams(server, 1)[0]
    next(first)  # running: only then the second, which must wait (two calls at once may arrive either way)
    second = server.stub.Generate(greq(1500, [p + 1 for p in PROMPT]))
    until(lambda: replica_state(server).num_waiting == 1)
    second.cancel()
    until(lambda: replica_state(server).num_waiting == 0)
    first.cancel()
    assert_idle(server)


def test_cancel_while_swapped_out(serve):
    server = serve([paced(tiny_config(10, "swap"))])
    calls = streams(server, 6, max_tokens=100)  # 9 blocks each, 10 in the pool
    until(lambda: replica_state(server).num_swapped > 0, timeout=30)
    for call in calls:
        call.cancel()
    assert_idle(server)


def test_deadline_while_queued_for_admission(serve):
    server = serve([paced(tiny_config(128))],
                   RouterConfig(poll_wait_s=0.05, rebalance=False, max_in_flight=1, max_queued=4))
    running = streams(server, 1)[0]
    next(running)
    with pytest.raises(grpc.RpcError) as err:
        list(server.stub.Generate(greq(4, PROMPT), timeout=0.5))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert server.stub.ClusterStatus(pb.ClusterStatusRequest()).counters.queued == 0
    running.cancel()
    assert_idle(server)


class SlowImport(LocalReplicaClient):
    """Holds an import back until `release` is set: the client can leave mid-migration."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.importing, self.release = threading.Event(), threading.Event()

    async def import_(self, exported) -> int:
        self.importing.set()
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        return await super().import_(exported)


def test_cancel_while_being_migrated(serve):
    config = tiny_config(128)
    source, target = paced(config, "r0"), paced(config, "r1", SlowImport)
    server = serve([source, target], RouterConfig(poll_wait_s=0.05, rebalance=False, routing="round_robin"))
    request = greq(1500, PROMPT)
    request.request_id = "moving"
    call = server.stub.Generate(request)
    first = next(call)
    assert first.replica_id == "r0"
    moved = asyncio.run_coroutine_threadsafe(server.router.migrate("moving", "r1"), server.loop)
    assert target.importing.wait(10)  # exported from r0, not yet in r1
    call.cancel()
    until(lambda: "moving" not in server.router.journal.entries)
    target.release.set()
    assert moved.result(10) is True
    # migrate() aborted it on the target before returning: the target's scheduler no longer has it
    # (a step already launched with it may still be settling; assert_idle waits for that).
    assert target.core is not None and "moving" not in target.core.engine.scheduler.requests
    assert_idle(server)
