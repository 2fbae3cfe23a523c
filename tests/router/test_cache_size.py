"""Cache-size specialization through the router: which replicas hold the large KV pool, and
where it shows (load report, ClusterStatus, after a restart)."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from shunter.proto import generation_pb2 as pb
from shunter.router.core import LocalReplicaClient
from shunter.router.core import Router, RouterConfig
from shunter.sampling_params import SamplingParams
from tests.fakes import FakeEngine


def fake_clients(large: set[str], n: int = 2) -> list[LocalReplicaClient]:
    return [LocalReplicaClient(f"r{i}", lambda: FakeEngine(step_time=0.002), large_cache=f"r{i}" in large)
            for i in range(n)]


def test_cluster_status_says_which_replicas_hold_the_large_cache(serve):
    server = serve(fake_clients({"r1"}), RouterConfig(poll_wait_s=0.05, rebalance=False, size_threshold_blocks=8))
    assert [r.large_cache for r in server.router.reports()] == [False, True]
    status = server.stub.ClusterStatus(pb.ClusterStatusRequest())
    assert [(r.replica_id, r.large_cache) for r in status.replicas] == [("r0", False), ("r1", True)]
    assert status.size_threshold_blocks == 8


def test_a_restarted_replica_rejoins_with_its_role():
    async def main():
        clients = fake_clients({"r0"})
        router = Router(clients, RouterConfig(poll_wait_s=0.05, rebalance=False))
        await router.start()
        clients[0].kill()
        asyncio.get_running_loop().call_later(0.2, clients[0].restart)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if router.counters.rejoined:
                break
        assert router.counters.rejoined == 1
        assert [r.large_cache for r in router.reports()] == [True, False]
        await router.stop()
        for c in clients:
            c.kill()

    asyncio.run(asyncio.wait_for(main(), 30))


# ---- through the router with real engines (random:tiny, in process) ------------------------
THRESHOLD = 3  # blocks of 16 tokens
SMALL_BLOCKS, LARGE_BLOCKS = 32, 128


def tiny_config(num_kv_blocks: int):
    from shunter.replica.engine_config import EngineConfig

    return EngineConfig(model="random:tiny", device="cpu", num_kv_blocks=num_kv_blocks, seed=0)


def offline(prompt: list[int], max_tokens: int) -> list[int]:
    """The oracle: the same request alone through the offline engine."""
    from shunter.replica.llm import LLM

    llm = LLM(**dataclasses.asdict(tiny_config(SMALL_BLOCKS)))
    out = llm.generate([prompt], SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True), use_tqdm=False)
    return out[0].outputs[0].token_ids


@pytest.fixture
def tiny_cluster():
    """'small' first, so that between equal loads the inner policy picks it; 'large' second."""
    from shunter.replica.engine import Engine

    clients = [LocalReplicaClient("small", lambda: Engine(tiny_config(SMALL_BLOCKS))),
               LocalReplicaClient("large", lambda: Engine(tiny_config(LARGE_BLOCKS)), large_cache=True)]
    # Load pairs off (abs_threshold out of reach): any move seen is cache-size specialization's.
    config = RouterConfig(poll_wait_s=0.05, size_threshold_blocks=THRESHOLD,
                          rebalancer_settings={"interval_s": 0.05, "abs_threshold": 10**6})
    yield Router(clients, config)
    for c in clients:
        c.kill()


async def stream(router: Router, rid: str, prompt: list[int], params: SamplingParams) -> tuple[list[int], list[str]]:
    tokens, replicas = [], []
    async for d in router.generate(rid, prompt, params):
        tokens += d.token_ids
        replicas.append(d.replica_id)
    return tokens, replicas


def test_long_prompts_land_on_the_large_cache_replica_short_ones_route_normally(tiny_cluster):
    router = tiny_cluster
    short, long = [(5 * j) % 500 + 3 for j in range(20)], [(7 * j) % 500 + 3 for j in range(60)]
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)

    async def main():
        await router.start()
        got = [await stream(router, "short", short, params), await stream(router, "long", long, params)]
        await router.stop()
        return got

    (short_tokens, short_at), (long_tokens, long_at) = asyncio.run(asyncio.wait_for(main(), 60))
    assert set(short_at) == {"small"}  # 2 blocks expected: not past the threshold
    assert set(long_at) == {"large"}  # 5 blocks expected
    assert short_tokens == offline(short, 8) and long_tokens == offline(long, 8)


def test_a_request_growing_past_the_threshold_moves_to_the_large_replica_with_its_kv(tiny_cluster):
    """Expected to be short (its hint), placed on the small replica, it outgrows the threshold
    while decoding: the rebalancer moves it, KV and all, and the client sees a plain run's tokens."""
    router = tiny_cluster
    prompt = [(11 * j) % 500 + 3 for j in range(20)]
    params = SamplingParams(max_tokens=240, temperature=0, ignore_eos=True, expected_output_tokens=4)

    async def main():
        await router.start()
        got = await stream(router, "grows", prompt, params)
        await router.stop()
        return got

    tokens, replicas = asyncio.run(asyncio.wait_for(main(), 60))
    assert tokens == offline(prompt, 240)
    assert replicas[0] == "small" and replicas[-1] == "large"
    assert router.counters.migrated == 1
    assert router.counters.migrated_recomputed == 0  # its KV came along
