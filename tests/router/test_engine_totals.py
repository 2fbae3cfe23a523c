"""Engine counts (cumulative since a replica started) become totals that never go backwards,
also when the replica restarts and counts from zero again."""
from __future__ import annotations

import asyncio
import dataclasses

from shunter.replica.engine_protocol import EngineStats
from shunter.router.core.engine_totals import ENGINE_COUNTS, EngineTotals
from shunter.router.core import LocalReplicaClient
from shunter.router.core import Router, RouterConfig
from shunter.sampling_params import SamplingParams
from tests.fakes import FakeEngine

# Counts of the prefix cache's CPU tier: none in these engines.
NO_CPU_TIER = {"prefix_hits_cpu": 0, "cpu_offload_bytes": 0, "cpu_load_bytes": 0, "cpu_evicted_blocks": 0,
               "cpu_load_timeouts": 0}


def stats(preemptions: int = 0, swaps: int = 0, queries: int = 0, hits: int = 0) -> EngineStats:
    return dataclasses.replace(FakeEngine().stats(), num_preemptions=preemptions, num_swaps=swaps,
                               prefix_queries=queries, prefix_hits=hits)


def test_reports_of_one_life_add_their_differences():
    t = EngineTotals()
    t.update(7, stats(2, 1, 100, 40))
    t.update(7, stats(2, 1, 100, 40))  # nothing new
    t.update(7, stats(5, 1, 180, 72))
    assert t.totals == {"num_preemptions": 5, "num_swaps": 1, "prefix_queries": 180, "prefix_hits": 72,
                        "spec_draft_tokens": 0, "spec_accepted_tokens": 0, **NO_CPU_TIER}


def test_a_restart_adds_the_new_life_whole_even_when_it_already_counted_more():
    t = EngineTotals()
    t.update(7, stats(3, 0, 100, 40))
    t.update(9, stats(5, 2, 30, 0))  # new epoch: counted from zero again, past the old life's 3 preemptions
    assert t.totals == {"num_preemptions": 8, "num_swaps": 2, "prefix_queries": 130, "prefix_hits": 40,
                        "spec_draft_tokens": 0, "spec_accepted_tokens": 0, **NO_CPU_TIER}
    t.update(9, stats(6, 2, 50, 16))
    assert t.totals == {"num_preemptions": 9, "num_swaps": 2, "prefix_queries": 150, "prefix_hits": 56,
                        "spec_draft_tokens": 0, "spec_accepted_tokens": 0, **NO_CPU_TIER}


def test_a_count_that_drops_within_an_epoch_is_a_reset_not_a_negative_increment():
    t = EngineTotals()
    t.update(1, stats(4, 0, 64, 32))
    t.update(1, stats(1, 0, 16, 0))
    assert t.totals["num_preemptions"] == 5 and t.totals["prefix_queries"] == 80
    assert all(v >= 0 for v in t.totals.values()) and set(t.totals) == set(ENGINE_COUNTS)


def test_the_router_keeps_a_replicas_totals_across_its_restart():
    async def main():
        client = LocalReplicaClient("r0", lambda: FakeEngine(step_time=0.002))
        router = Router([client], RouterConfig(poll_wait_s=0.05, rebalance=False))
        await router.start()

        async def one(rid: str) -> None:  # 40 prompt tokens: 2 full blocks, found cached from the 2nd time on
            async for _ in router.generate(rid, [7] * 40, SamplingParams(max_tokens=2, ignore_eos=True)):
                pass

        try:
            await one("a")
            await one("b")
            assert router.slots["r0"].totals.totals["prefix_queries"] == 80
            client.restart()  # a new engine, counting from zero (its poll may or may not fail first)
            await asyncio.sleep(0.1)
            while not router.slots["r0"].healthy:
                await asyncio.sleep(0.02)
            for rid in "cde":
                await one(rid)
            assert router.slots["r0"].totals.totals == {"num_preemptions": 0, "num_swaps": 0,
                                                        "prefix_queries": 200, "prefix_hits": 32 + 64,
                                                        "spec_draft_tokens": 0, "spec_accepted_tokens": 0, **NO_CPU_TIER}
        finally:
            await router.stop()
            client.kill()

    asyncio.run(asyncio.wait_for(main(), 30))
