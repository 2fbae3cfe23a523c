"""Two routers (two frontends) serving from the same in-process replicas: each gets the tokens of
its own requests only, and both see every replica's cache events."""
from __future__ import annotations

import asyncio

from shunter.router.core import LocalReplicaClient
from shunter.router.core import Router, RouterConfig
from shunter.sampling_params import SamplingParams
from tests.fakes import FakeEngine, reference_output


async def collect(router: Router, rid: str, prompt: list[int], max_tokens: int) -> list[int]:
    out = []
    async for d in router.generate(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True)):
        out += d.token_ids
    return out


def test_two_routers_share_replicas_and_each_streams_its_own_requests():
    async def main():
        replicas = [LocalReplicaClient(f"r{i}", lambda: FakeEngine(step_time=0.002)) for i in range(2)]
        config = RouterConfig(poll_wait_s=0.05, rebalance=False)
        routers = [Router([c.for_consumer(f"fe-{k}") for c in replicas], config) for k in range(2)]
        try:
            for r in routers:
                await r.start()
            prompts = [[i + 1] * 40 for i in range(8)]
            results = await asyncio.gather(*(collect(routers[i % 2], f"q{i}", p, 25) for i, p in enumerate(prompts)))
            assert results == [reference_output(p, 25, ignore_eos=True) for p in prompts]
            # Both routers learned every prompt's blocks, whichever router sent the request.
            for r in routers:
                held = set().union(*r.index.by_replica.values())
                assert len(held) >= 8 * 2  # 8 distinct prompts of 2 full 16-token blocks
            await asyncio.gather(*(r.stop() for r in routers))
        finally:
            for c in replicas:
                c.kill()

    asyncio.run(asyncio.wait_for(main(), 30))
