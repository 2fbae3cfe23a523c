"""The Redis state store against a real redis-server (loopback, with a password): `--state`
parsing, start-up errors, and what a frontend leaves in Redis (journal, prefix index, registry,
heartbeats), with its TTLs and bounds."""
from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from shunter.replica.block_hash import block_hashes
from shunter.replica.engine_protocol import CacheEvent
from shunter.router.shared_state import redis_keys as keys
from shunter.router.shared_state import RedisStateStore
from shunter.router.shared_state import RedisURL, StateStoreError, parse_state, probe
from shunter.router.core import LocalReplicaClient
from shunter.router.shared_state.replica_registry import ReplicaEntry, last_reports, live_frontends, register, registered
from shunter.router.core import Router, RouterConfig
from shunter.sampling_params import SamplingParams
from shunter.testing.redis_server import free_port
from tests.fakes import FakeEngine, reference_output


@pytest.mark.parametrize("text, says", [
    ("postgres://h/0", "must be memory, or redis://"),
    ("redis://:hunter2@h:99999/0", "Port out of range"),
    ("redis://:hunter2@:6379/0", "names no host"),
    ("redis://h:6379/zero", "the database must be a number"),
    ("redis://h:6379/0?ssl_cert_reqs=none", "options after '?'"),
    ("redis://h:0/0", "port 0"),
])
def test_a_malformed_state_url_says_what_is_wrong_and_never_shows_the_password(text, says):
    with pytest.raises(ValueError) as err:
        parse_state(text)
    assert says in str(err.value) and "hunter2" not in str(err.value)


def test_state_urls_parse():
    assert parse_state("memory") is None
    url = parse_state("rediss://ops:s%40cret@cache.internal:6380/3")
    assert (url.host, url.port, url.db, url.username, url.password, url.tls) == \
        ("cache.internal", 6380, 3, "ops", "s@cret", True)
    assert str(url) == "rediss://ops:***@cache.internal:6380/3" and "s@cret" not in repr(url)
    assert parse_state("redis://localhost") == RedisURL("localhost")


def test_start_up_errors_are_one_clear_line_not_a_retry_loop(redis_db):
    good = redis_db.url
    cases = [
        (RedisURL(good.host, good.port, password="wrong"), "refused the password"),
        (RedisURL(good.host, good.port), "requires a password"),
        (RedisURL(good.host, good.port, 99, password=good.password), "DB index is out of range"),
        (RedisURL(good.host, free_port(), password=good.password), "cannot reach Redis at redis://:***@127.0.0.1"),
    ]
    for url, says in cases:
        start = time.monotonic()
        with pytest.raises(StateStoreError) as err:
            probe(url)
        assert says in str(err.value) and good.password not in str(err.value)
        with pytest.raises(StateStoreError, match=re.escape(says)):  # the frontend's own connect says the same
            asyncio.run(RedisStateStore(url).connect())
        assert time.monotonic() - start < 5
    probe(good)


def frontend(redis_db, n_replicas: int = 2, **store_options):
    """A router over in-process fake replicas with a Redis store (not started)."""
    store = RedisStateStore(redis_db.url, **store_options)
    replicas = [LocalReplicaClient(f"r{i}", lambda: FakeEngine(step_time=0.002), consumer=store.frontend_id)
                for i in range(n_replicas)]
    return Router(replicas, RouterConfig(poll_wait_s=0.05, rebalance=False), state=store), replicas


async def collect(router: Router, rid: str, prompt: list[int], max_tokens: int) -> list[int]:
    out = []
    async for d in router.generate(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0)):
        out += d.token_ids
    return out


def test_the_journal_holds_each_request_and_expires_after_it_ends(redis_db):
    async def main():
        router, replicas = frontend(redis_db, retain_s=1.0)
        await router.start()
        prompt = list(range(1, 41))
        assert await collect(router, "j1", prompt, 30) == reference_output(prompt, 30, ignore_eos=True)
        await router.journal.writer.flush()
        record = await router.journal.lookup("j1")
        assert list(record.tokens) == reference_output(prompt, 30, ignore_eos=True)
        assert (list(record.prompt_token_ids), record.params.max_tokens, record.state, record.finish_reason) == \
            (prompt, 30, "finished", "length")
        assert record.owner == router.journal.frontend_id and record.replica_id in ("r0", "r1")
        with redis_db.client() as client:
            assert 0 < client.pttl(keys.request("j1")) <= 1000 and 0 < client.pttl(keys.tokens("j1")) <= 1000
        await asyncio.sleep(1.2)
        with redis_db.client() as client:
            assert not client.exists(keys.request("j1"), keys.tokens("j1"))
        await router.stop()
        for r in replicas:
            r.kill()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_live_request_is_journaled_as_it_streams(redis_db):
    async def main():
        router, replicas = frontend(redis_db)
        await router.start()
        stream = router.generate("live", [3] * 20, SamplingParams(max_tokens=4000, ignore_eos=True))
        got = []
        async for d in stream:
            got += d.token_ids
            if len(got) >= 20:
                break
        await router.journal.writer.flush()
        record = await router.journal.lookup("live")
        journaled, sent = list(record.tokens), router.journal.get("live").sent  # it streams on meanwhile
        assert record.state == "live" and len(journaled) >= len(got) and journaled == sent[: len(journaled)]
        assert journaled[: len(got)] == got
        await stream.aclose()
        await router.journal.writer.flush()
        assert (await router.journal.lookup("live")).state == "ended"  # the client left
        await router.stop()
        for r in replicas:
            r.kill()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_the_prefix_index_is_mirrored_and_bounded_newest_first(redis_db):
    async def main():
        router, replicas = frontend(redis_db, n_replicas=1, prefix_cap=3, heartbeat_s=0.05)
        await router.start()
        for i in range(3):  # three prompts of two full blocks each: six hashes stored in order
            await collect(router, f"p{i}", [i + 7] * 32, 1)
        await asyncio.sleep(0.15)  # trimmed with a heartbeat
        await router.journal.writer.flush()
        with redis_db.client() as client:
            held = [int(h) for h in client.zrange(keys.prefix("r0"), 0, -1)]
        assert len(held) == 3 and set(held) <= router.index.by_replica["r0"]
        assert set(block_hashes([9] * 32, 16)) <= set(held)  # the last prompt's blocks are kept
        assert not set(block_hashes([7] * 32, 16)) & set(held)  # the first prompt's went
        await router.stop()
        replicas[0].kill()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_each_tier_of_the_prefix_index_has_its_own_set_and_a_new_frontend_reads_both(redis_db):
    async def main():
        router, replicas = frontend(redis_db, n_replicas=1)
        await router.start()
        router.journal._mirror("r0", [CacheEvent("stored", 5), CacheEvent("stored", 5, "cpu"),
                                      CacheEvent("stored", 6, "cpu"), CacheEvent("evicted", 5)])
        await router.journal.writer.flush()
        with redis_db.client() as client:
            assert [int(h) for h in client.zrange(keys.prefix("r0"), 0, -1)] == []
            assert sorted(int(h) for h in client.zrange(keys.prefix("r0", "cpu"), 0, -1)) == [5, 6]
        other, _ = frontend(redis_db, n_replicas=1)  # its store only: it begins with what Redis holds
        await other.journal.start(other)
        assert other.index.cpu_by_replica["r0"] == {5, 6} and other.index.num_cpu_entries == 2
        assert other.index.match([5, 6]) == {"r0": 2} and other.index.by_replica["r0"] == set()
        await other.journal.stop()
        await router.stop()
        replicas[0].kill()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_registry_and_heartbeats(redis_db):
    entries = [ReplicaEntry(f"r{i}", f"shunter-r{i}", "shunter", "fake:ids") for i in range(2)]
    register(redis_db.url, entries)
    assert registered(redis_db.url) == entries

    async def main():
        router, replicas = frontend(redis_db, heartbeat_s=0.05)
        await router.start()
        await asyncio.sleep(0.2)
        me = router.journal.frontend_id
        assert await asyncio.to_thread(live_frontends, redis_db.url) == [me]
        reports = await asyncio.to_thread(last_reports, redis_db.url, ["r0", "r1", "r9"])
        assert reports["r9"] is None and reports["r0"]["kv_blocks_total"] > 0
        with redis_db.client() as client:
            assert 0 < client.pttl(keys.frontend(me)) <= keys.FRONTEND_TTL_MS
            assert 0 < client.pttl(keys.replica("r0")) <= keys.REPLICA_TTL_MS
        await router.stop()
        assert await asyncio.to_thread(live_frontends, redis_db.url) == []  # a clean stop says so at once
        for r in replicas:
            r.kill()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert json.loads(redis_db.client().hget(keys.REPLICAS, "r1"))["actor"] == "shunter-r1"
