"""The Router over in-process fake replicas: streams, migration, failover, overload."""
from __future__ import annotations

import asyncio

import pytest

from shunter.errors import Overloaded
from shunter.router.core import LocalReplicaClient
from shunter.router.core import Router, RouterConfig
from shunter.sampling_params import SamplingParams
from tests.fakes import FakeEngine, reference_output
from tests.router.token_counts import tell_each_count


@pytest.fixture
def make_router():
    """Routers over in-process fake replicas; every replica's engine thread is stopped at
    teardown, also when the test failed half-way."""
    made: list[LocalReplicaClient] = []

    def make(n: int = 2, step_time: float = 0.002, **config) -> tuple[Router, list[LocalReplicaClient]]:
        clients = [LocalReplicaClient(f"r{i}", lambda: FakeEngine(step_time=step_time)) for i in range(n)]
        made.extend(clients)
        config.setdefault("rebalance", False)
        return Router(clients, RouterConfig(poll_wait_s=0.05, **config)), clients

    yield make
    for client in made:
        client.kill()


async def collect(router: Router, rid: str, prompt: list[int], max_tokens: int, on_token=None):
    tokens, deltas = [], []
    async for d in router.generate(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True)):
        before = len(tokens)
        tokens += d.token_ids
        deltas.append(d)
        if on_token is not None:
            await tell_each_count(on_token, before, len(tokens))
    return tokens, deltas


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_streams_equal_the_reference_and_spread_over_replicas(make_router):
    async def main():
        router, clients = make_router(routing="least_load")
        await router.start()
        prompts = [[i + 1] * 20 for i in range(6)]
        results = await asyncio.gather(*(collect(router, f"q{i}", p, 30) for i, p in enumerate(prompts)))
        for p, (tokens, deltas) in zip(prompts, results):
            assert tokens == reference_output(p, 30, ignore_eos=True)
            assert deltas[-1].finish_reason == "length"
        assert {d.replica_id for _, ds in results for d in ds} == {"r0", "r1"}
        assert len(router.journal) == 0 and router.counters.routed == 6
        await router.stop()

    run(main())


def test_migration_mid_stream_keeps_the_tokens(make_router):
    async def main():
        router, clients = make_router(step_time=0.005)
        await router.start()
        moved = []

        async def on_token(n):
            if n == 10 and not moved:
                src = router.journal.get("m").replica_id
                moved.append((src, await router.migrate("m", "r1" if src == "r0" else "r0")))

        tokens, deltas = await collect(router, "m", [5] * 40, 60, on_token)
        assert tokens == reference_output([5] * 40, 60, ignore_eos=True)
        assert moved[0][1] and router.counters.migrated == 1
        assert len({d.replica_id for d in deltas}) == 2
        await router.stop()

    run(main())


def test_killed_replica_streams_complete_with_fault_free_tokens_and_it_rejoins(make_router):
    async def main():
        router, clients = make_router(n=2, step_time=0.005, routing="round_robin")
        await router.start()
        killed = []

        async def on_token(n):
            if n == 8 and not killed:
                killed.append(True)
                clients[0].kill()
                asyncio.get_running_loop().call_later(0.3, clients[0].restart)

        prompts = [[i + 2] * 20 for i in range(4)]
        results = await asyncio.gather(
            *(collect(router, f"k{i}", p, 40, on_token if i == 0 else None) for i, p in enumerate(prompts)))
        for p, (tokens, _) in zip(prompts, results):
            assert tokens == reference_output(p, 40, ignore_eos=True)
        assert router.counters.failed_over >= 1
        for _ in range(100):
            if router.slots["r0"].healthy:
                break
            await asyncio.sleep(0.05)
        assert router.slots["r0"].healthy and router.counters.rejoined == 1
        await router.stop()

    run(main())


def test_overload_is_refused_not_queued_forever(make_router):
    async def main():
        router, clients = make_router(max_in_flight=1, step_time=0.01)
        await router.start()
        first = router.generate("a", [1] * 10, SamplingParams(max_tokens=50, ignore_eos=True))
        await first.__anext__()
        with pytest.raises(Overloaded):
            await router.generate("b", [1] * 10, SamplingParams(max_tokens=5)).__anext__()
        await first.aclose()
        assert len(router.journal) == 0
        await router.stop()

    run(main())


def test_rebalancer_moves_requests_off_a_crowded_replica(make_router):
    async def main():
        router, clients = make_router(step_time=0.01, routing="round_robin", rebalance=True,
                                      rebalancer_settings={"interval_s": 0.1, "abs_threshold": 4, "rel_threshold": 1.1,
                                                           "measure": "expected"})
        await router.start()
        router.slots["r1"].healthy = router.slots["r1"].report.healthy = False  # everything lands on r0
        router.loads.update(router.slots["r1"].report)
        gens = [collect(router, f"b{i}", [i + 1] * 30, 60) for i in range(4)]
        task = asyncio.gather(*gens)
        await asyncio.sleep(0.1)
        router.slots["r1"].healthy = router.slots["r1"].report.healthy = True
        router.loads.update(router.slots["r1"].report)
        results = await task
        for i, (tokens, _) in enumerate(results):
            assert tokens == reference_output([i + 1] * 30, 60, ignore_eos=True)
        assert router.counters.migrated >= 1
        await router.stop()

    run(main())


def test_the_rebalance_loop_hands_the_rebalancer_the_moves_in_flight_and_their_requests(make_router):
    """A request migrating stays in its source's report (so the rebalancer can weigh it) and its
    move is passed along, so the next round counts it as done instead of planning another."""
    async def main():
        router, clients = make_router(rebalance=True, rebalancer_settings={"interval_s": 0.05})
        seen = []
        router.rebalancer.plan = lambda reports, in_flight: seen.append((reports, dict(in_flight))) or []
        await router.start()
        stream = router.generate("m", [1] * 20, SamplingParams(max_tokens=500, ignore_eos=True))
        await stream.__anext__()
        entry = router.journal.get("m")
        source = entry.replica_id
        entry.migrating = True
        router.migrations_in_flight["m"] = (source, "r1" if source == "r0" else "r0")
        seen.clear()
        await asyncio.sleep(0.2)
        reports, in_flight = seen[-1]
        assert in_flight == {"m": router.migrations_in_flight["m"]}
        assert [q.request_id for r in reports if r.replica_id == source for q in r.requests] == ["m"]
        entry.migrating = False
        router.migrations_in_flight.clear()
        await stream.aclose()
        await router.stop()

    run(main())


def test_a_request_the_engine_refuses_fails_its_stream_with_the_engines_message(make_router):
    """submit does not wait for the engine thread; the refusal comes back through the poll."""
    async def main():
        router, clients = make_router()
        await router.start()
        with pytest.raises(ValueError, match="outside the vocabulary"):
            await collect(router, "bad", [1, 5000], 4)
        tokens, _ = await collect(router, "good", [1, 2, 3], 4)  # the replica keeps serving
        assert tokens == reference_output([1, 2, 3], 4, ignore_eos=True)
        assert len(router.journal) == 0
        await router.stop()

    run(main())
