"""Overload: the bounded admission queue, its retry hint, and KV pressure that preempts, never fails.

The queue is unit-tested on its own (order, refusal, a waiter that leaves); then over gRPC with
in-process fake replicas (queued count in ClusterStatus and metrics, RESOURCE_EXHAUSTED with
`retry-after-ms`). KV pressure runs the real engine (random:tiny) on a pool far smaller than the
load: every request completes with the tokens of an unpressured offline run.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses

import grpc
import pytest

from shunter.errors import Overloaded
from shunter.proto import generation_pb2 as pb
from shunter.router.core.admission import Admission
from shunter.router.core import LocalReplicaClient
from shunter.router.core import RouterConfig
from shunter.sampling_params import SamplingParams
from shunter.testing.background import BackgroundServer
from tests.fakes import FakeEngine
from tests.router.prometheus_page import Page, until


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_admission_is_bounded_and_a_queued_waiter_that_leaves_holds_nothing():
    async def main():
        adm = Admission(max_in_flight=1, max_queued=2)
        first = await adm.acquire()
        order: list[str] = []

        async def wait(name: str) -> float:
            taken = await adm.acquire()
            order.append(name)
            return taken

        b, c = asyncio.create_task(wait("b")), asyncio.create_task(wait("c"))
        await asyncio.sleep(0)
        assert (adm.active, adm.queued) == (1, 2)
        with pytest.raises(Overloaded) as err:
            await adm.acquire()
        assert err.value.retry_after_ms is not None and err.value.retry_after_ms >= 50
        b.cancel()  # its client left while queued: it leaves the line, holding nothing
        await asyncio.sleep(0)
        assert adm.queued == 1
        adm.release(first)
        adm.release(await c)
        assert order == ["c"] and (adm.active, adm.queued) == (0, 0)

    run(main())


def test_a_slot_handed_to_a_waiter_that_left_is_passed_on():
    async def main():
        adm = Admission(max_in_flight=1, max_queued=2)
        first = await adm.acquire()
        b, c = asyncio.create_task(adm.acquire()), asyncio.create_task(adm.acquire())
        await asyncio.sleep(0)
        adm.release(first)  # b is handed the slot ...
        b.cancel()  # ... and leaves before it runs
        adm.release(await c)
        assert (adm.active, adm.queued) == (0, 0)

    run(main())


def test_closing_refuses_everyone_in_line():
    async def main():
        adm = Admission(max_in_flight=1, max_queued=2)
        first = await adm.acquire()
        waiters = [asyncio.create_task(adm.acquire()) for _ in range(2)]
        await asyncio.sleep(0)
        assert adm.close(RuntimeError("shut down")) == 2 and adm.queued == 0
        for w in waiters:
            with pytest.raises(RuntimeError, match="shut down"):
                await w
        adm.release(first)
        assert adm.active == 0

    run(main())


def test_retry_hint_grows_with_the_queue_and_the_hold_time():
    now = [0.0]
    adm = Admission(max_in_flight=2, max_queued=8, clock=lambda: now[0])
    for _ in range(20):  # requests that held their slot 4 s each
        taken = now[0]
        now[0] += 4.0
        adm.active += 1
        adm.release(taken)
    assert adm.mean_hold_s == pytest.approx(4.0, rel=0.05)
    assert adm.retry_after_ms() == pytest.approx(2000, rel=0.05)  # 4 s / 2 slots


def greq(max_tokens: int, prompt=(5,)) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=list(prompt)),
                              sampling=pb.SamplingOptions(max_tokens=max_tokens, ignore_eos=True, temperature=0))


def test_queue_then_resource_exhausted_with_a_retry_hint():
    server = BackgroundServer([LocalReplicaClient("r0", lambda: FakeEngine(step_time=0.01))],
                              RouterConfig(poll_wait_s=0.05, rebalance=False, max_in_flight=1, max_queued=1),
                              metrics=True)
    try:
        long = server.stub.Generate(greq(2000))
        next(long)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            queued = pool.submit(lambda: list(server.stub.Generate(greq(3), timeout=30)))
            until(lambda: server.stub.ClusterStatus(pb.ClusterStatusRequest()).counters.queued == 1)
            assert Page.scrape(server.metrics_url).get("shunter:requests_queued") == 1
            with pytest.raises(grpc.RpcError) as err:
                list(server.stub.Generate(greq(2)))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            hint = dict(err.value.trailing_metadata())
            assert int(hint["retry-after-ms"]) >= 50
            long.cancel()  # the running one leaves: the queued one gets its slot and completes
            chunks = queued.result(30)
        assert chunks[-1].finish_reason == "length" and sum(len(c.token_ids) for c in chunks) == 3
        status = server.stub.ClusterStatus(pb.ClusterStatusRequest())
        assert (status.counters.queued, status.counters.in_flight, status.counters.rejected) == (0, 0, 1)
        assert server.router.counters.rejected_by == {"max_in_flight": 1}
    finally:
        server.close()


def tiny_config(num_kv_blocks: int, preemption_mode: str = "recompute"):
    from shunter.replica.engine_config import EngineConfig

    return EngineConfig(model="random:tiny", device="cpu", num_kv_blocks=num_kv_blocks, seed=0, max_num_seqs=8,
                        preemption_mode=preemption_mode, num_threads=1)


def tiny_client(config, name: str = "r0", kind: type[LocalReplicaClient] = LocalReplicaClient) -> LocalReplicaClient:
    from shunter.replica.engine import Engine

    return kind(name, lambda: Engine(config))


def offline(prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """The same requests one engine at a time with room to spare: no preemption."""
    from shunter.replica.llm import LLM

    llm = LLM(**dataclasses.asdict(tiny_config(256)))
    outs = llm.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


PRESSURE_PROMPTS = [[(11 * i + j) % 500 + 3 for j in range(30 + 3 * i)] for i in range(8)]


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_kv_pressure_preempts_and_every_request_completes_unchanged(serve, mode):
    # 8 requests of 4-5 blocks each against a pool of 10: half of them must be preempted.
    server = serve([tiny_client(tiny_config(10, mode))])
    with concurrent.futures.ThreadPoolExecutor(len(PRESSURE_PROMPTS)) as pool:
        results = list(pool.map(lambda p: list(server.stub.Generate(greq(40, p), timeout=120)), PRESSURE_PROMPTS))
    got = [[t for c in chunks for t in c.token_ids] for chunks in results]
    assert all(chunks[-1].finish_reason == "length" for chunks in results)
    assert got == offline(PRESSURE_PROMPTS, 40)
    totals = server.router.slots["r0"].totals.totals
    assert totals["num_preemptions"] > 0
    if mode == "swap":
        assert totals["num_swaps"] > 0
    until(lambda: server.stub.ClusterStatus(pb.ClusterStatusRequest()).replicas[0].kv_blocks_in_use == 0)
