"""The outbox: news wakes only the newest parked poll, drains are numbered, a submit's poll parks first."""
from __future__ import annotations

import asyncio
import threading
import time

from shunter.replica.engine_protocol import CacheEvent, EngineOutput
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


# ---- one channel per consumer (several frontends serving from one replica) ------------------
def test_tokens_go_to_their_consumer_and_cache_events_to_every_consumer():
    async def main():
        box = outbox()
        box.own("a", "fe-1")
        box.own("b", "fe-2")
        stored = [CacheEvent("stored", 7)]
        box.publish(token("a", 1) + token("b", 1) + token("c", 1), stored, FakeEngine().stats())
        one, two, default = await box.poll(0.0, "fe-1"), await box.poll(0.0, "fe-2"), await box.poll(0.0)
        assert [d.request_id for d in one.deltas] == ["a"] and [d.request_id for d in two.deltas] == ["b"]
        assert [d.request_id for d in default.deltas] == ["c"]
        assert one.events == two.events == default.events == stored
        assert len({one.epoch, two.epoch, default.epoch}) == 3  # each channel numbers its own drains

    run(main())


def test_news_for_one_consumer_does_not_wake_another():
    async def main():
        box = outbox()
        box.own("a", "fe-1")
        other = asyncio.create_task(box.poll(5.0, "fe-2"))
        mine = asyncio.create_task(box.poll(5.0, "fe-1"))
        await asyncio.sleep(0)
        publish(box, token("a", 1))
        assert [d.request_id for d in (await asyncio.wait_for(mine, 1)).deltas] == ["a"]
        await asyncio.sleep(0.01)
        assert not other.done()
        other.cancel()

    run(main())


def test_a_consumer_that_stops_polling_is_dropped_with_its_requests():
    """A frontend that died leaves a channel nobody drains: after `idle_s` it goes, its requests
    are handed back for the replica to abort, and its late tokens are not kept."""
    async def main():
        box = Outbox(FakeEngine().stats(), idle_s=0.05)
        box.own("a", "gone")
        box.own("b", "alive")
        await box.poll(0.0, "gone")
        await asyncio.sleep(1.1)  # past idle_s and the once-a-second sweep
        await box.poll(0.0, "alive")
        assert box.publish(token("a", 1), [CacheEvent("stored", 1)], FakeEngine().stats()) == ["a"]
        publish(box, token("a", 2))
        assert "gone" not in box._channels
        assert [d.request_id for d in (await box.poll(0.0, "alive")).deltas] == []

    run(main())


def test_an_undrained_channel_keeps_only_the_newest_cache_events(monkeypatch):
    import shunter.replica.outbox as outbox_module

    monkeypatch.setattr(outbox_module, "MAX_EVENTS", 3)
    box = outbox()
    box.publish([], [CacheEvent("stored", h) for h in range(5)], FakeEngine().stats())
    assert [e.block_hash for e in box.poll_blocking(0.0).events] == [2, 3, 4]


def test_a_taken_request_reaches_every_channel_with_the_stats_that_count_it():
    box = outbox()
    box.taken("a")
    assert box.poll_blocking(0.0, consumer="fe-1").taken == []  # not before a publish's stats include it
    publish(box, [])
    assert box.poll_blocking(0.0, consumer="fe-1").taken == ["a"]
    assert box.poll_blocking(0.0).taken == ["a"]
