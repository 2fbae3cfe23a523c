"""The outbox: news wakes only the newest parked poll, drains are numbered, a submit's poll parks first."""
from __future__ import annotations

import asyncio
import threading
import time

from shunter.replica.engine_protocol import EngineOutput
from shunter.replica.outbox import Outbox
from tests.fakes import FakeEngine


def outbox() -> Outbox:
    return Outbox(FakeEngine().stats())


def token(request_id: str, n: int) -> list[EngineOutput]:
    return [EngineOutput(request_id, [n], n)]


def publish(box: Outbox, outputs: list[EngineOutput]) -> None:
    box.publish(outputs, [], FakeEngine().stats())


async def parked(box: Outbox, wait: float = 5.0) -> asyncio.Task:
    task = asyncio.create_task(box.poll(wait))
    await asyncio.sleep(0)  # let it park
    return task


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_news_wakes_only_the_newest_poll():
    async def main():
        box = outbox()
        old = await parked(box)
        new = await parked(box)
        publish(box, token("a", 1))
        got = await new
        assert [d.request_id for d in got.deltas] == ["a"]
        await asyncio.sleep(0.01)
        assert not old.done()  # no empty reply raced the one with the news
        publish(box, token("a", 2))
        assert [d.new_token_ids for d in (await old).deltas] == [[2]]

    run(main())


def test_no_second_poll_is_woken_before_the_first_drains():
    async def main():
        box = outbox()
        old = await parked(box)
        new = await parked(box)
        publish(box, token("a", 1))
        publish(box, token("b", 1))  # before the woken poll ran
        got = await new
        assert sorted(d.request_id for d in got.deltas) == ["a", "b"]
        await asyncio.sleep(0.01)
        assert not old.done()
        old.cancel()

    run(main())


def test_a_woken_poll_cancelled_before_draining_passes_the_news_on():
    async def main():
        box = outbox()
        old = await parked(box)
        new = await parked(box)
        publish(box, token("a", 1))
        new.cancel()
        got = await asyncio.wait_for(old, 1)  # woken now, not at its timeout
        assert [d.request_id for d in got.deltas] == ["a"]

    run(main())


def test_drains_are_numbered_within_a_life():
    async def main():
        box = outbox()
        first = await box.poll(0.0)
        publish(box, token("a", 1))
        second = await box.poll(0.0)
        assert (first.seq, second.seq) == (0, 1) and first.epoch == second.epoch
        assert (await outbox().poll(0.0)).epoch != first.epoch  # a new life starts over

    run(main())


def test_a_submit_parks_its_poll_before_the_request_is_queued():
    """The engine may make the first token before the submitting thread gets to wait: the
    poll, parked first, still gets it (not the older parked poll)."""
    async def main():
        box = outbox()
        old = await parked(box)
        engine = threading.Thread(target=publish, args=(box, token("a", 1)))
        got = await asyncio.to_thread(box.poll_blocking, 5.0, engine.start)
        engine.join()
        assert [d.request_id for d in got.deltas] == ["a"]
        await asyncio.sleep(0.01)
        assert not old.done()
        old.cancel()

    run(main())


def test_a_submit_does_not_wait_when_enough_polls_are_parked():
    async def main():
        box = outbox()
        old = await parked(box)
        start = time.monotonic()
        got = await asyncio.to_thread(box.poll_blocking, 5.0, lambda: None, 1)
        assert time.monotonic() - start < 1 and got.deltas == []
        old.cancel()

    run(main())
