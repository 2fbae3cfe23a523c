"""Prefill/decode disaggregation: long prompts start on a prefill-only replica and move, with
their KV, to a decode replica after their first token; short ones never touch a prefill replica.

Over in-process replicas running the real Engine on the KV-checking fake runner (a block copied
wrong fails the next step), the client's tokens are the reference's whether the hand-off
commits, fails, or either replica dies in between, and no block stays held anywhere. One test
runs random:tiny, real KV, against the offline engine.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from shunter.clock import FakeClock
from shunter.replica.engine import Engine
from shunter.replica.engine_config import EngineConfig

from shunter.router.core import LocalReplicaClient, Router, RouterConfig
from shunter.router.routing import LoadIndex, LoadReport, PrefixIndex, RoutingRequest, make_routing_policy
from shunter.router.routing.disaggregation import Disaggregated
from shunter.replica.block_hash import block_hashes
from shunter.replica.engine_protocol import CacheEvent
from shunter.sampling_params import SamplingParams
from tests.replica.fakes import prompt, reference_output
from tests.router.test_live_migration import PacedRunner, nothing_held, paced_engine, run
from tests.router.token_counts import tell_each_count

MAX_TOKENS = 80
THRESHOLD = 64  # tokens: the fake engines' prompts of 150 are long, of 40 short


# ---- the routing decision ------------------------------------------------------------------------
def pools(*reports: LoadReport) -> tuple[LoadIndex, Disaggregated, PrefixIndex]:
    index = PrefixIndex()
    return LoadIndex(reports), Disaggregated(make_routing_policy("prefix_aware", index), index, THRESHOLD), index


def request(tokens: list[int]) -> RoutingRequest:
    hashes = block_hashes(tokens, 16)
    return RoutingRequest("q", hashes, len(hashes) + 1, len(hashes) + 4, len(tokens), 16)


def test_long_prompts_start_on_the_prefill_pool_short_ones_and_cached_ones_on_the_decode_pool():
    p0, d0, d1 = LoadReport("p0", prefill_only=True, kv_blocks_in_use=50), LoadReport("d0", kv_blocks_in_use=9), \
        LoadReport("d1", kv_blocks_in_use=3)
    loads, policy, index = pools(p0, d0, d1)
    assert loads.report("p0") is None and loads.prefill.report("p0") is p0  # a pool apart
    long, short = prompt(150, 1), prompt(40, 2)
    assert policy.choose(loads, request(long)) == "p0"  # however loaded: it is the only prefill replica
    assert policy.choose(loads, request(short)) == "d1"
    index.apply("d0", [CacheEvent("stored", h) for h in block_hashes(long, 16)[:6]])  # 96 of 150 cached on d0
    assert policy.uncached_tokens(request(long), lambda rid: loads.report(rid) is not None) == 150 - 96
    assert policy.choose(loads, request(long)) == "d0"  # its prefill is short there
    index.apply("p0", [CacheEvent("stored", h) for h in block_hashes(short, 16)])
    assert policy.choose(loads, request(short)) == "d1"  # a prefix on a prefill replica draws no short prompt


def test_the_split_degrades_to_one_pool_never_to_a_refusal():
    p0, d0 = LoadReport("p0", prefill_only=True), LoadReport("d0")
    loads, policy, _ = pools(p0, d0)
    p0.healthy = False
    loads.update(p0)
    assert policy.choose(loads, request(prompt(150, 1))) == "d0"
    p0.healthy, d0.healthy = True, False
    loads.update(p0)
    loads.update(d0)
    assert policy.choose(loads, request(prompt(40, 2))) == "p0"
    assert policy.decode_target(loads, request(prompt(150, 1))) is None  # it decodes where it is


def test_a_replica_whose_first_report_says_prefill_moves_to_that_pool():
    report = LoadReport("r0")
    loads = LoadIndex([report, LoadReport("r1")])
    report.prefill_only = True  # the router learns a replica's role from its first info
    loads.put(report)
    assert loads.report("r0") is None and loads.prefill.least() is report
    assert [r.replica_id for r in loads.healthy()] == ["r1"]


# ---- through the Router ----------------------------------------------------------------------------
@pytest.fixture
def cluster():
    made: list[LocalReplicaClient] = []

    def make(prefill=("p0",), decode=("d0", "d1"), blocks: int = 64) -> tuple[Router, dict[str, LocalReplicaClient]]:
        clients = [LocalReplicaClient(rid, lambda: paced_engine(blocks), prefill_only=rid in prefill)
                   for rid in (*prefill, *decode)]
        made.extend(clients)
        config = RouterConfig(poll_wait_s=0.05, rebalance=False, routing="least_load",
                              prefill_threshold_tokens=THRESHOLD)
        return Router(clients, config), {c.replica_id: c for c in clients}

    yield make
    for client in made:
        client.kill()


async def stream(router: Router, rid: str, tokens_in: list[int], on_token=None, max_tokens: int = MAX_TOKENS
                 ) -> tuple[list[int], list[str]]:
    """The tokens, and the replica each came from."""
    got, where = [], []
    async for delta in router.generate(rid, tokens_in, SamplingParams(max_tokens=max_tokens, temperature=0)):
        before = len(got)
        got += delta.token_ids
        where += [delta.replica_id] * len(delta.token_ids)
        if on_token is not None:
            await tell_each_count(on_token, before, len(got))
    return got, where


def test_a_long_prompt_prefills_on_the_prefill_replica_and_decodes_on_a_decode_replica(cluster):
    async def main():
        router, clients = cluster()
        await router.start()
        long, shorts = prompt(150, 1), [prompt(40, 10 + i) for i in range(4)]
        results = await asyncio.gather(stream(router, "long", long),
                                       *(stream(router, f"s{i}", p) for i, p in enumerate(shorts)))
        (tokens, where), rest = results[0], results[1:]
        assert tokens == reference_output(long, MAX_TOKENS)
        assert where[0] == "p0" and where[-1] in ("d0", "d1")  # the first token from the prefill replica
        assert router.counters.handed_off == 1 and router.migration_log[0].source == "p0"
        assert not router.counters.migrations_refused_by  # one hand-off a request: the streamed one, no other try
        assert router.migration_log[0].resumed_tokens > 150  # its KV came along: nothing recomputed
        for (got, from_), p in zip(rest, shorts):
            assert got == reference_output(p, MAX_TOKENS) and "p0" not in from_
        assert "p0" not in router.counters.routed_to or router.counters.routed_to["p0"] == 1
        await nothing_held(list(clients.values()))
        await router.stop()

    run(main())


class SlowRunner(PacedRunner):
    def execute(self, out):
        time.sleep(0.004)
        return super().execute(out)


def chunked_engine() -> Engine:
    """A prefill of 400 tokens takes 13 steps of 32 tokens, ~80 ms: long enough to stream."""
    clock = FakeClock()
    config = EngineConfig(model="fake", num_kv_blocks=64, max_num_batched_tokens=32, check_invariants=True)
    return Engine(config, clock=clock, runner=SlowRunner(64, 16, clock=clock))


def test_the_kv_streams_while_the_prefill_runs_and_the_commit_carries_only_the_last_chunk():
    async def main():
        clients = [LocalReplicaClient("p0", chunked_engine, prefill_only=True),
                   LocalReplicaClient("d0", lambda: paced_engine(64))]
        router = Router(clients, RouterConfig(poll_wait_s=0.05, rebalance=False, prefill_threshold_tokens=THRESHOLD))
        await router.start()
        long = prompt(400, 6)
        tokens, where = await stream(router, "long", long)
        assert tokens == reference_output(long, MAX_TOKENS)
        record = router.migration_log[0]
        assert router.counters.handed_off == 1 and record.mode == "live" and record.stages >= 3
        assert record.blocks_staged >= 20 and record.blocks_at_commit <= 4  # 25 blocks; the last chunks' at commit
        # The call that found the prompt computed took the request out: the prefill replica made its first token only.
        assert where[0] == "p0" and where.count("p0") == 1
        await nothing_held(clients)
        await router.stop()
        for c in clients:
            c.kill()

    run(main())


@pytest.mark.parametrize("leaves_at", ["prefill", "first token"])
def test_a_client_leaving_during_the_hand_off_leaves_nothing_held(leaves_at):
    async def main():
        clients = [LocalReplicaClient("p0", chunked_engine, prefill_only=True),
                   LocalReplicaClient("d0", lambda: paced_engine(64))]
        router = Router(clients, RouterConfig(poll_wait_s=0.05, rebalance=False, prefill_threshold_tokens=THRESHOLD))
        await router.start()

        async def leave(n: int) -> None:
            raise asyncio.CancelledError

        call = stream(router, "long", prompt(400, 7), leave)
        with pytest.raises((asyncio.CancelledError, asyncio.TimeoutError)):
            await (asyncio.wait_for(call, 0.04) if leaves_at == "prefill" else call)
        for _ in range(50):
            if not router.migrations_in_flight:
                break
            await asyncio.sleep(0.02)
        await nothing_held(clients)
        assert not any(c.core.engine.kv.reservations for c in clients)
        await router.stop()
        for c in clients:
            c.kill()

    run(main())


def test_a_prefill_replica_dying_before_its_first_token_fails_over_to_the_other(cluster):
    async def main():
        router, clients = cluster(prefill=("p0", "p1"))
        await router.start()
        killed = []
        for rid in ("p0", "p1"):
            client = clients[rid]
            real = client.submit

            async def dies(*args, client=client, real=real):
                await real(*args)
                if not killed:  # the first prefill replica to get it dies at once
                    killed.append(client.replica_id)
                    client.kill()
                    asyncio.get_running_loop().call_later(0.3, client.restart)

            client.submit = dies
        long = prompt(150, 3)
        tokens, where = await stream(router, "long", long)
        assert tokens == reference_output(long, MAX_TOKENS)
        survivor = ({"p0", "p1"} - set(killed)).pop()
        assert where[0] == survivor and where[-1] in ("d0", "d1")
        assert router.counters.failed_over == 1 and router.counters.handed_off == 1
        await asyncio.sleep(0.5)
        await nothing_held(list(clients.values()))
        await router.stop()

    run(main())


def test_a_decode_replica_dying_after_the_hand_off_prefills_again_and_hands_off_again(cluster):
    async def main():
        router, clients = cluster()
        await router.start()
        long = prompt(150, 4)

        async def on_token(n: int) -> None:
            entry = router.journal.get("long")
            if n == 30 and entry.replica_id in ("d0", "d1"):
                clients[entry.replica_id].kill()
                asyncio.get_running_loop().call_later(0.3, clients[entry.replica_id].restart)

        tokens, where = await stream(router, "long", long, on_token)
        assert tokens == reference_output(long, MAX_TOKENS)
        assert router.counters.failed_over == 1 and router.counters.handed_off == 2
        assert where[30] == "p0" and where[-1] in ("d0", "d1")  # prompt + 30 tokens prefilled on p0 again
        await asyncio.sleep(0.5)
        await nothing_held(list(clients.values()))
        await router.stop()

    run(main())


def test_a_decode_target_dying_during_the_hand_off_leaves_the_request_where_it_was_then_it_tries_again(cluster):
    async def main():
        router, clients = cluster()
        await router.start()
        first = []
        for rid in ("d0", "d1"):
            client = clients[rid]
            real = client.reserve

            async def dies(*args, client=client, real=real):
                if not first:
                    first.append(client.replica_id)
                    client.kill()
                    asyncio.get_running_loop().call_later(0.5, client.restart)
                return await real(*args)

            client.reserve = dies
        long = prompt(150, 5)
        tokens, where = await stream(router, "long", long, max_tokens=300)  # long enough for a retry (RETRY_S)
        assert tokens == reference_output(long, 300)
        assert router.counters.migrations_aborted_by == {"target_died": 1} and router.counters.handed_off == 1
        other = ({"d0", "d1"} - set(first)).pop()
        assert where[0] == "p0" and where[1] == "p0" and where[-1] == other  # kept decoding on p0 meanwhile
        await asyncio.sleep(0.6)
        await nothing_held(list(clients.values()))
        await router.stop()

    run(main())


def test_a_restarted_prefill_replica_rejoins_in_its_pool(cluster):
    async def main():
        router, clients = cluster()
        await router.start()
        clients["p0"].kill()
        asyncio.get_running_loop().call_later(0.1, clients["p0"].restart)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if router.counters.rejoined:
                break
        assert router.counters.rejoined == 1 and router.slots["p0"].report.prefill_only
        assert router.loads.report("p0") is None and router.loads.prefill.least().replica_id == "p0"
        await router.stop()

    run(main())


def test_real_kv_prefilled_on_one_replica_decodes_on_another_token_for_token():
    """random:tiny in process: the real model's KV moves, and greedy tokens equal the offline engine's."""
    from shunter.replica.llm import LLM

    config = EngineConfig(model="random:tiny", device="cpu", num_kv_blocks=128, seed=0)
    long = [(7 * j + 3) % 500 + 1 for j in range(150)]
    want = LLM(model="random:tiny", device="cpu", num_kv_blocks=128, seed=0).generate(
        [long], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True), use_tqdm=False)[0].outputs[0].token_ids

    async def main():
        clients = [LocalReplicaClient(rid, lambda: Engine(config), prefill_only=rid == "p0") for rid in ("p0", "d0")]
        router = Router(clients, RouterConfig(poll_wait_s=0.05, rebalance=False, prefill_threshold_tokens=THRESHOLD))
        await router.start()
        got, where = [], []
        async for delta in router.generate("long", long, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)):
            got += delta.token_ids
            where += [delta.replica_id] * len(delta.token_ids)
        assert got == want and where[0] == "p0" and where[-1] == "d0"
        assert router.counters.handed_off == 1 and router.migration_log[0].resumed_tokens > 0
        await router.stop()
        for c in clients:
            c.kill()

    run(main())
