"""Live migration through the Router, over in-process replicas running the real Engine on the
KV-checking fake runner (a block copied wrong fails the next step): the stream keeps its tokens
whether the move commits or aborts, and no block stays held on either replica."""
from __future__ import annotations

import asyncio
import time

import pytest

from shunter.clock import FakeClock
from shunter.replica.engine import Engine
from shunter.replica.engine_config import EngineConfig
from shunter.router.core import LocalReplicaClient, Router, RouterConfig
from shunter.router.core.migration import MigrationSettings
from shunter.sampling_params import SamplingParams
from tests.replica.fakes import FakeRunner, prompt, reference_output
from tests.router.token_counts import tell_each_count

MAX_TOKENS = 120


class PacedRunner(FakeRunner):
    """A step takes a little real time, so a request is still running when a migration starts."""

    def execute(self, out):
        time.sleep(0.002)
        return super().execute(out)


def paced_engine(num_blocks: int = 64, block_size: int = 16) -> Engine:
    clock = FakeClock()
    config = EngineConfig(model="fake", num_kv_blocks=num_blocks, block_size=block_size, check_invariants=True)
    return Engine(config, clock=clock, runner=PacedRunner(num_blocks, block_size, clock=clock))


@pytest.fixture
def cluster():
    made: list[LocalReplicaClient] = []

    def make(blocks=(64, 64), block_sizes=(16, 16), **migration) -> tuple[Router, list[LocalReplicaClient]]:
        clients = [LocalReplicaClient(f"r{i}", lambda n=n, b=b: paced_engine(n, b))
                   for i, (n, b) in enumerate(zip(blocks, block_sizes))]
        made.extend(clients)
        config = RouterConfig(poll_wait_s=0.05, rebalance=False, routing="round_robin",
                              migration=MigrationSettings(**migration))
        return Router(clients, config), clients

    yield make
    for client in made:
        client.kill()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def stream(router: Router, rid: str, tokens_in: list[int], on_token=None) -> list[int]:
    """The stream's tokens; `on_token(n)` is awaited once for each n, after the n-th token came
    (a delta carries several tokens when the stream runs ahead of its reader)."""
    got: list[int] = []
    async for delta in router.generate(rid, tokens_in, SamplingParams(max_tokens=MAX_TOKENS, temperature=0)):
        before = len(got)
        got += delta.token_ids
        if on_token is not None:
            await tell_each_count(on_token, before, len(got))
    return got


def other(router: Router, rid: str) -> str:
    return next(r for r in router.slots if r != router.journal.get(rid).replica_id)


async def nothing_held(clients: list[LocalReplicaClient]) -> None:
    for _ in range(100):  # aborts and cancellations run as commands between steps
        if all(c.core is None or (not c.core.engine.kv.reservations and c.core.engine.stats().kv_blocks_in_use == 0)
               for c in clients):
            return
        await asyncio.sleep(0.02)
    raise AssertionError({c.replica_id: (c.core.engine.kv.reservations, c.core.engine.stats().kv_blocks_in_use)
                          for c in clients if c.core is not None})


def moving_at(router: Router, rid: str, at: tuple[int, ...], results: list[bool]):
    async def on_token(n: int) -> None:
        if n in at:
            results.append(await router.migrate(rid, other(router, rid)))
    return on_token


def test_a_stream_moved_live_twice_keeps_its_tokens_and_the_stages_carried_most_blocks(cluster):
    async def main():
        router, clients = cluster()
        await router.start()
        p = prompt(150, 1)
        moved: list[bool] = []
        assert await stream(router, "m", p, moving_at(router, "m", (10, 40), moved)) == reference_output(p, MAX_TOKENS)
        assert moved == [True, True] and router.counters.migrated == 2 and router.counters.migrated_recomputed == 0
        first, second = list(router.migration_log)
        assert first.mode == "live" and first.stages >= 1 and first.blocks_staged >= 150 // 16
        assert first.blocks_at_commit <= 2 and first.resumed_tokens > 150  # the commit carried the tail only
        assert (second.source, second.target) == (first.target, first.source)
        await nothing_held(clients)
        await router.stop()

    run(main())


def test_stop_and_copy_stays_an_option(cluster):
    async def main():
        router, clients = cluster(mode="stop-and-copy")
        await router.start()
        p = prompt(90, 2)
        moved: list[bool] = []
        assert await stream(router, "m", p, moving_at(router, "m", (12,), moved)) == reference_output(p, MAX_TOKENS)
        record = router.migration_log[0]
        assert moved == [True] and record.mode == "stop-and-copy" and record.stages == 0 and record.blocks_staged == 0
        await nothing_held(clients)
        await router.stop()

    run(main())


@pytest.mark.parametrize("when", ["reserve", "stage"])
def test_a_target_killed_during_the_stages_aborts_and_the_stream_runs_on_where_it_was(cluster, when):
    async def main():
        router, clients = cluster()
        await router.start()
        p = prompt(120, 3)
        target = {}

        async def on_token(n: int) -> None:
            if n == 10:
                dst = other(router, "m")
                target["id"] = dst
                client = router.slots[dst].client
                real = client.reserve if when == "reserve" else client.import_blocks

                async def dies(*args):
                    client.kill()
                    return await real(*args)

                setattr(client, "reserve" if when == "reserve" else "import_blocks", dies)
                assert not await router.migrate("m", dst)

        got = await stream(router, "m", p, on_token)
        assert got == reference_output(p, MAX_TOKENS)
        assert router.counters.migrations_aborted_by == {"target_died": 1} and router.counters.migrated == 0
        assert router.counters.failed_over == 0  # it never left its replica
        await nothing_held(clients)
        await router.stop()

    run(main())


def test_a_target_out_of_blocks_refuses_the_reservation_and_nothing_moves(cluster):
    async def main():
        router, clients = cluster(blocks=(64, 4))
        await router.start()
        p = prompt(120, 4)
        moved: list[bool] = []

        async def on_token(n: int) -> None:
            if n == 5:
                moved.append(await router.migrate("m", other(router, "m")))

        assert await stream(router, "m", p, on_token) == reference_output(p, MAX_TOKENS)  # on r0, round robin
        assert moved == [False] and router.counters.migrations_aborted_by == {"target_out_of_blocks": 1}
        await nothing_held(clients)
        await router.stop()

    run(main())


def test_a_source_killed_during_the_stages_fails_over_and_the_target_frees_its_reservation(cluster):
    async def main():
        router, clients = cluster()
        await router.start()
        p = prompt(120, 5)

        async def on_token(n: int) -> None:
            if n == 10:
                src = router.slots[router.journal.get("m").replica_id].client
                real = src.export_blocks

                async def dies(*args):
                    src.kill()
                    asyncio.get_running_loop().call_later(0.5, src.restart)
                    return await real(*args)

                src.export_blocks = dies
                assert not await router.migrate("m", other(router, "m"))

        assert await stream(router, "m", p, on_token) == reference_output(p, MAX_TOKENS)
        assert router.counters.migrations_aborted_by == {"source_died": 1} and router.counters.failed_over == 1
        await nothing_held(clients)
        await router.stop()

    run(main())


def test_a_client_leaving_mid_migration_leaves_nothing_behind(cluster):
    async def main():
        router, clients = cluster()
        await router.start()
        p = prompt(120, 6)

        async def on_token(n: int) -> None:
            if n == 10:
                dst = router.slots[other(router, "m")].client
                real = dst.import_blocks

                async def slow(*args):
                    await asyncio.sleep(0.1)
                    return await real(*args)

                dst.import_blocks = slow
                router._spawn(router.migrate("m", other(router, "m")), "migrate m")
                await asyncio.sleep(0.02)  # the stage is on its way
                raise asyncio.CancelledError  # the client leaves

        with pytest.raises(asyncio.CancelledError):
            await stream(router, "m", p, on_token)
        for _ in range(50):
            if not router.migrations_in_flight:
                break
            await asyncio.sleep(0.02)
        assert router.counters.migrated == 0 and router.counters.migrations_aborted_by == {"request_ended": 1}
        await nothing_held(clients)
        await router.stop()

    run(main())


@pytest.mark.parametrize("case", ["unknown_target", "unhealthy_target", "unknown_request", "same_replica",
                                  "block_size", "finished"])
def test_a_migration_that_cannot_work_is_refused_with_its_reason_and_the_request_untouched(cluster, case):
    async def main():
        router, clients = cluster(block_sizes=(16, 32) if case == "block_size" else (16, 16))
        await router.start()
        p = prompt(60, 7)
        answers: list[bool] = []

        async def on_token(n: int) -> None:
            if n == 5 and case != "finished":
                here = router.journal.get("m").replica_id
                target = {"unknown_target": "nowhere", "same_replica": here}.get(case, other(router, "m"))
                if case == "unhealthy_target":
                    router._mark_down(router.slots[target])
                rid = "nobody" if case == "unknown_request" else "m"
                answers.append(await router.migrate(rid, target))

        assert await stream(router, "m", p, on_token) == reference_output(p, MAX_TOKENS)
        if case == "finished":
            answers.append(await router.migrate("m", "r1"))
        reason = "unknown_request" if case == "finished" else case  # its stream ended: its id is gone
        assert answers == [False] and router.counters.migrations_refused_by == {reason: 1}
        assert router.counters.migrated == 0 and not router.migration_log
        await router.stop()

    run(main())
