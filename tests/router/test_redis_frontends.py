"""Several frontends over the same replicas, sharing state through a real redis-server: the
routing view (prefixes, placements) and resume through any frontend, also after one died.

The frontends are gRPC servers in this process over in-process fake replicas, each with its own
channel of every replica (`LocalReplicaClient.for_consumer`). A frontend "dies" here by losing
its tasks at once, its last state unsent (`die`); tests/router/test_redis_ray.py kills a real
`shunter serve --frontend-only` process.
"""
from __future__ import annotations

import logging
import threading
import time

import grpc
import pytest

from shunter.proto import generation_pb2 as pb
from shunter.router.shared_state import RedisStateStore
from shunter.router.core import LocalReplicaClient
from shunter.router.core import RouterConfig
from shunter.testing.background import BackgroundServer
from tests.fakes import FakeEngine, reference_output


@pytest.fixture
def cluster(redis_db):
    """`cluster(n_replicas, step_time, routing)` -> (replicas, start): `start()` adds a frontend."""
    made: list[tuple[list[LocalReplicaClient], list[BackgroundServer]]] = []

    def make(n_replicas: int = 2, step_time: float = 0.005, routing: str = "prefix_aware"):
        replicas = [LocalReplicaClient(f"r{i}", lambda: FakeEngine(step_time=step_time)) for i in range(n_replicas)]
        servers: list[BackgroundServer] = []
        made.append((replicas, servers))

        def start(**store_options) -> BackgroundServer:
            store = RedisStateStore(redis_db.url, **store_options)
            config = RouterConfig(routing=routing, poll_wait_s=0.05, rebalance=False)
            servers.append(BackgroundServer([c.for_consumer(store.frontend_id) for c in replicas], config, state=store))
            return servers[-1]

        return replicas, start

    yield make
    for replicas, servers in made:
        for s in servers:
            if not getattr(s, "dead", False):
                s.close()
        for r in replicas:
            r.kill()


def request(rid: str, prompt: list[int], max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(request_id=rid, prompt_token_ids=pb.TokenIds(ids=prompt),
                              sampling=pb.SamplingOptions(max_tokens=max_tokens, ignore_eos=True, temperature=0))


def read(call, upto: int | None = None) -> tuple[list[int], list[str]]:
    tokens, replicas = [], []
    for chunk in call:
        tokens += chunk.token_ids
        replicas.append(chunk.replica_id)
        if upto is not None and len(tokens) >= upto:
            break
    return tokens, replicas


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def flush(server: BackgroundServer) -> None:
    server.call(server.router.journal.writer.flush())


def die(server: BackgroundServer) -> None:
    """The frontend is gone at once: nothing more reaches Redis (its writer, listener and
    heartbeat stop first), its polls stop, its gRPC port closes. Its heartbeat key expires on its own."""
    async def go():
        store = server.router.journal
        for task in [store.writer._task, *store._tasks, *server.router._tasks]:
            task.cancel()
        server.router._stopping = True
        await server.frontend.server.stop(grace=None)

    server.call(go())
    server.channel.close()
    server.dead = True


P, Q = [5] * 48, [6] * 48  # three full blocks each


def test_a_prefix_one_frontend_placed_routes_the_same_on_every_frontend(cluster):
    """P and Q run at once through frontend A, so they land on different replicas. Then requests
    sharing P or Q land with them through B (which heard the replicas' cache events itself) and
    through C, started afterwards, which only knows what Redis holds."""
    replicas, start = cluster()
    a, b = start(), start()
    p_call = a.stub.Generate(request("p", P, 60))
    _, p_on = read(p_call, 1)
    _, q_on = read(a.stub.Generate(request("q", Q, 5)))
    read(p_call)
    assert p_on[0] != q_on[0]
    flush(a)
    c = start()
    for i, frontend in enumerate((b, c, b, c)):
        _, on = read(frontend.stub.Generate(request(f"p{i}", P + [i + 1] * 20, 3)))
        assert on[0] == p_on[0], (i, frontend.router.index.by_replica)
        _, on = read(frontend.stub.Generate(request(f"q{i}", Q + [i + 1] * 20, 3)))
        assert on[0] == q_on[0], i


def test_a_placement_on_one_frontend_counts_on_the_others_before_the_replica_reports(cluster):
    """Steps of 0.6 s: no report shows the first request for that long. B hears A's placement on
    the bus and sends the second request elsewhere (without it both would go to the first of equals)."""
    replicas, start = cluster(step_time=0.6, routing="least_load")
    a, b = start(), start()
    time.sleep(0.7)  # both have seen a report of idle replicas
    first = a.stub.Generate(request("first", [1] * 10, 2))
    time.sleep(0.1)
    second = b.stub.Generate(request("second", [2] * 10, 2))
    on = [read(call)[1][0] for call in (first, second)]
    assert sorted(on) == ["r0", "r1"]


def test_a_stream_resumes_through_another_frontend_after_its_frontend_died(cluster, redis_db):
    replicas, start = cluster()
    a, b = start(), start()
    prompt, want = [9] * 30, reference_output([9] * 30, 400, ignore_eos=True)
    got, _ = read(a.stub.Generate(request("survivor", prompt, 400)), 25)
    flush(a)
    die(a)
    t0 = time.monotonic()
    rest, _ = read(b.stub.Generate(pb.GenerateRequest(request_id="survivor", resume_from=len(got))))
    assert got + rest == want
    assert time.monotonic() - t0 < 10  # waited out A's heartbeat (3 s), then adopted
    wait_until(lambda: len(b.router.journal) == 0)  # the stream has ended there too
    flush(b)
    record = b.call(b.router.journal.lookup("survivor"))
    assert record.owner == b.router.journal.frontend_id and record.state == "finished"
    assert all(not r.core.engine.requests for r in replicas)  # A's copy was aborted, not left running


def test_resuming_through_another_frontend_while_the_first_still_streams_hands_it_over(cluster):
    replicas, start = cluster()
    a, b = start(), start()
    prompt = [4] * 30
    old = a.stub.Generate(request("moved", prompt, 300))
    got, _ = read(old, 10)
    rest, _ = read(b.stub.Generate(pb.GenerateRequest(request_id="moved", resume_from=len(got))))
    assert got + rest == reference_output(prompt, 300, ignore_eos=True)
    with pytest.raises(grpc.RpcError) as err:
        read(old)
    assert err.value.code() == grpc.StatusCode.ABORTED and "another frontend" in err.value.details()


def test_bad_resumes_through_another_frontend_are_clear_errors(cluster):
    replicas, start = cluster()
    a, b = start(), start()
    whole, _ = read(a.stub.Generate(request("done", [3] * 20, 8)))
    flush(a)
    rest, _ = read(b.stub.Generate(pb.GenerateRequest(request_id="done", resume_from=3)))
    assert rest == whole[3:]  # replayed from the journal A wrote
    for req, code in [(pb.GenerateRequest(request_id="done", resume_from=9), grpc.StatusCode.INVALID_ARGUMENT),
                      (pb.GenerateRequest(request_id="never", resume_from=0), grpc.StatusCode.NOT_FOUND)]:
        with pytest.raises(grpc.RpcError) as err:
            read(b.stub.Generate(req))
        assert err.value.code() == code, err.value.details()
    assert read(b.stub.Generate(request("after", [3] * 20, 4)))[0] == whole[:4]


def test_redis_stopped_and_restarted_mid_load_loses_no_request(cluster, redis_db, caplog):
    """24 streams over two frontends, Redis down for a while in the middle: every stream completes
    with its reference tokens, each frontend warns once and says when Redis is back, and then
    resynchronises: a request that ran during the outage is journaled again (the other frontend
    replays it) and one started during the outage resumes through the other frontend."""
    caplog.set_level(logging.WARNING, logger="shunter.router.shared_state.redis_writer")
    replicas, start = cluster(step_time=0.01)
    frontends = start(), start()
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def stream(i: int) -> None:
        try:
            results[i] = read(frontends[i % 2].stub.Generate(request(f"load-{i}", [i + 1] * 24, 60), timeout=60))[0]
        except BaseException as e:  # noqa: BLE001 - a lost request, reported below
            errors.append(e)

    threads: list[threading.Thread] = []

    def launch(ids) -> None:
        for i in ids:
            threads.append(threading.Thread(target=stream, args=(i,)))
            threads[-1].start()

    launch(range(8))
    time.sleep(0.2)
    redis_db.stop()
    launch(range(8, 16))
    during = frontends[0].stub.Generate(request("during", [77] * 24, 400))
    got, _ = read(during, 5)
    wait_until(lambda: all(not f.router.journal.writer.up for f in frontends))  # both noticed
    time.sleep(0.5)
    redis_db.start()
    launch(range(16, 24))
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 24
    for i, tokens in results.items():
        assert tokens == reference_output([i + 1] * 24, 60, ignore_eos=True), i
    wait_until(lambda: all(f.router.journal.writer.up for f in frontends))
    for f in frontends:
        flush(f)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is unreachable" in m for m in messages) == 2, messages  # one warning per frontend
    assert sum("is back" in m for m in messages) == 2, messages
    # Resynchronised: frontend 1 replays a request frontend 0 served during the outage, ...
    replay, _ = read(frontends[1].stub.Generate(pb.GenerateRequest(request_id="load-8", resume_from=50)))
    assert replay == results[8][50:]
    # ... and takes over one frontend 0 started during the outage and is still streaming.
    rest, _ = read(frontends[1].stub.Generate(pb.GenerateRequest(request_id="during", resume_from=len(got))))
    assert got + rest == reference_output([77] * 24, 400, ignore_eos=True)


def test_a_client_that_left_resumes_on_the_same_frontend_before_its_end_reached_redis(cluster):
    """The stream ended here a moment ago; Redis still says it streams here (the end is in the
    writer's next batch): the frontend's own record wins."""
    replicas, start = cluster()
    a = start()
    call = a.stub.Generate(request("quick", [8] * 20, 300))
    got, _ = read(call, 10)
    a.router.journal.writer.interval_s = 2.0  # from now on what is written stays in the writer a while
    time.sleep(0.02)  # (a batch already gathering goes out at once)
    call.cancel()
    wait_until(lambda: len(a.router.journal) == 0)
    assert a.call(a.router.journal._read("quick")).state == "live"  # Redis has not heard yet
    record = a.call(a.router.journal.lookup("quick"))
    assert record.state == "ended" and list(record.tokens)[: len(got)] == got
    a.router.journal.writer.interval_s = 0.005
    rest, _ = read(a.stub.Generate(pb.GenerateRequest(request_id="quick", resume_from=len(got))))
    assert got + rest == reference_output([8] * 20, 300, ignore_eos=True)
