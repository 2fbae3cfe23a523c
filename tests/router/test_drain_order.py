"""DrainOrder: drains arriving out of order over several calls come out in the replica's order."""
from __future__ import annotations

import asyncio

import pytest

from shunter.replica.outbox import PollResult, TokenDelta
from shunter.router.cluster.drain_order import DrainOrder
from shunter.router.core import ReplicaDead
from tests.fakes import FakeEngine

STATS = FakeEngine().stats()


def drain(seq: int, epoch: int = 7, *request_ids: str) -> PollResult:
    return PollResult(STATS, [TokenDelta(r, [seq], seq + 1) for r in request_ids], [], epoch, seq)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def pending(order: DrainOrder) -> bool:
    """True if `next()` has nothing to hand out yet."""
    task = asyncio.create_task(order.next())
    await asyncio.sleep(0.01)
    if task.done():
        return False
    task.cancel()
    return True


def test_a_drain_that_overtook_an_earlier_one_waits_for_it():
    async def main():
        order = DrainOrder("r0")
        submit, poll = order.started(), order.started()
        order.put(poll, drain(1))
        assert await pending(order)
        order.put(submit, drain(0))
        assert [(await order.next()).seq for _ in range(2)] == [0, 1]

    run(main())


def test_a_gap_no_call_in_flight_can_fill_is_skipped():
    async def main():
        order = DrainOrder("r0")
        lost, poll = order.started(), order.started()
        order.put(poll, drain(1))
        order.lost(lost, RuntimeError("reply did not deserialize"), "q1")
        got = await order.next()
        assert got.seq == 1
        refused = [(d.request_id, d.finish_reason, d.error) for d in got.deltas]
        assert refused == [("q1", "error", "reply did not deserialize")]

    run(main())


def test_a_router_joining_late_starts_at_the_replica_s_current_drain():
    async def main():
        order = DrainOrder("r0")
        order.put(order.started(), drain(41))
        assert (await order.next()).seq == 41

    run(main())


def test_death_raises_once_and_late_replies_of_that_life_are_ignored():
    async def main():
        order = DrainOrder("r0")
        submit, poll = order.started(), order.started()
        order.dead(poll, ReplicaDead("r0 died"))
        order.put(submit, drain(0))  # a reply of the old life, landing late
        with pytest.raises(ReplicaDead):
            await order.next()
        assert await pending(order)
        order.put(order.started(), drain(0, epoch=8))  # the restarted replica
        got = await order.next()
        assert (got.epoch, got.seq) == (8, 0)

    run(main())


def test_a_restart_seen_only_in_the_epoch_is_a_death():
    async def main():
        order = DrainOrder("r0")
        order.put(order.started(), drain(0))
        await order.next()
        order.put(order.started(), drain(0, epoch=8))
        with pytest.raises(ReplicaDead):
            await order.next()

    run(main())


def test_a_failed_poll_raises_its_error():
    async def main():
        order = DrainOrder("r0")
        order.lost(order.started(), RuntimeError("boom"))
        with pytest.raises(RuntimeError, match="boom"):
            await order.next()

    run(main())
