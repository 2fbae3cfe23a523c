"""gRPC end to end over two Ray replicas running the real engine on CPU.

random:tiny for most checks (tokens equal the offline engine's, a shared prefix lands on the
replica holding it), SmolLM2 once (text prompt through its tokenizer, tokens equal offline).
"""
from __future__ import annotations

import dataclasses

import pytest

from shunter.mathutil import cdiv
from shunter.proto import generation_pb2 as pb
from shunter.router.core import RouterConfig
from shunter.sampling_params import SamplingParams
from shunter.testing.background import BackgroundServer

pytestmark = pytest.mark.slow


def start(ray_cluster, config, prefix: str, routing: str = "prefix_aware") -> tuple[BackgroundServer, list]:
    from shunter.router.cluster import RayReplicaClient, spawn

    clients = [RayReplicaClient(f"{prefix}{i}", spawn(f"{prefix}{i}", config, num_cpus=1)) for i in range(2)]
    return BackgroundServer(clients, RouterConfig(routing=routing, poll_wait_s=0.2, rebalance=False)), clients


def offline(config, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    from shunter.replica.llm import LLM

    llm = LLM(**dataclasses.asdict(config))
    outs = llm.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def generate(server, max_tokens: int, **kw) -> list[pb.GenerateResponse]:
    req = pb.GenerateRequest(sampling=pb.SamplingOptions(max_tokens=max_tokens, temperature=0, ignore_eos=True), **kw)
    return list(server.stub.Generate(req, timeout=120))


@pytest.fixture(scope="module")
def tiny(ray_cluster):
    from shunter.replica.engine_config import EngineConfig

    config = EngineConfig(model="random:tiny", device="cpu", num_kv_blocks=256, seed=0)
    server, clients = start(ray_cluster, config, "tiny")
    yield server, config
    server.close()
    for c in clients:
        ray_cluster.kill(c.handle, no_restart=True)


def test_tiny_tokens_equal_the_offline_engine(tiny):
    server, config = tiny
    prompts = [[(7 * i + j) % 500 + 1 for j in range(20 + 5 * i)] for i in range(3)]
    got = [[t for c in generate(server, 12, prompt_token_ids=pb.TokenIds(ids=p)) for t in c.token_ids] for p in prompts]
    assert got == offline(config, prompts, 12)


def test_shared_prefix_lands_on_the_holder(tiny):
    server, _ = tiny
    system = [(13 * j) % 500 + 1 for j in range(4 * 16)]
    first = generate(server, 4, prompt_token_ids=pb.TokenIds(ids=system + [5, 6, 7]))
    holder = first[-1].replica_id
    for k in range(3):
        chunks = generate(server, 4, prompt_token_ids=pb.TokenIds(ids=system + [20 + k] * 5))
        assert chunks[-1].replica_id == holder
        assert chunks[-1].usage.cached_tokens >= len(system) - 16


def test_smollm2_text_prompt_equals_the_offline_engine(ray_cluster, tiny, smollm2_folder):
    from shunter.replica.engine_config import EngineConfig

    server, clients = start(ray_cluster, EngineConfig(device="cpu", num_kv_blocks=128, seed=0), "smol")
    try:
        chunks = generate(server, 12, prompt="The capital of France is")
        ids = server.router.info.tokenizer("The capital of France is").input_ids
        want = offline(EngineConfig(device="cpu", num_kv_blocks=128, seed=0), [list(ids)], 12)[0]
        assert [t for c in chunks for t in c.token_ids] == want
        assert "".join(c.text for c in chunks) == server.router.info.tokenizer.decode(want, skip_special_tokens=True)
    finally:
        server.close()
        for c in clients:
            ray_cluster.kill(c.handle, no_restart=True)


def stream_and_migrate(server, prompt: list[int], max_tokens: int, at: int, with_kv: bool) -> tuple[list[int], set, list]:
    """Stream a request; after `at` tokens, move it to the other replica (blocking the reader
    while the move runs, so it surely happens mid-stream)."""
    moved: list[bool] = []
    tokens: list[int] = []
    replicas = set()
    req = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=prompt),
                             sampling=pb.SamplingOptions(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    for chunk in server.stub.Generate(req, timeout=120):
        tokens += chunk.token_ids
        replicas.add(chunk.replica_id)
        if len(tokens) >= at and not moved:
            others = [r for r in server.router.slots if r != chunk.replica_id]
            moved.append(server.call(server.router.migrate(chunk.request_id, others[0], with_kv=with_kv)))
    return tokens, replicas, moved


@pytest.mark.parametrize("with_kv", [True, False], ids=["kv-moved", "kv-lost-recompute"])
def test_live_migration_of_real_kv_keeps_the_tokens(tiny, with_kv):
    """The KV blocks go actor to actor and the target resumes decoding without recomputing the
    request (or, without them, recomputes); either way the client's tokens are a plain run's."""
    server, config = tiny
    prompt = [(11 * j + (3 if with_kv else 5)) % 500 + 1 for j in range(37)]  # 2 full blocks + a partial one
    counters = server.router.counters
    migrated, recomputed = counters.migrated, counters.migrated_recomputed
    tokens, replicas, moved = stream_and_migrate(server, prompt, 160, at=6, with_kv=with_kv)
    assert moved == [True] and counters.migrated == migrated + 1
    assert len(replicas) == 2
    assert tokens == offline(config, [prompt], 160)[0]
    assert counters.migrated_recomputed == recomputed + (0 if with_kv else 1)


def test_a_long_prompt_prefilled_on_a_prefill_actor_decodes_on_the_other_token_for_token(ray_cluster):
    """P/D over Ray: the KV streams actor to actor while the prefill runs (`stream_blocks`: Ray
    stages, then the commit's export from the call that finds the prompt computed)."""
    from shunter.replica.engine_config import EngineConfig
    from shunter.router.cluster import RayReplicaClient, spawn

    config = EngineConfig(model="random:tiny", device="cpu", num_kv_blocks=256, seed=0, max_num_batched_tokens=16)
    clients = [RayReplicaClient(rid, spawn(rid, config, num_cpus=1, prefill_only=rid == "pd1")) for rid in ("pd0", "pd1")]
    server = BackgroundServer(clients, RouterConfig(poll_wait_s=0.2, rebalance=False, prefill_threshold_tokens=64))
    try:
        # 38 steps of 16 tokens on the prefill actor: the stream, which starts once a probe finds the first
        # block computed, has tens of steps to catch up even when the machine is busy (with 5 steps of 64 a
        # busy CI once saw the prompt computed before the first stage).
        prompt = [(13 * j + 7) % 500 + 1 for j in range(600)]
        responses = generate(server, 24, prompt_token_ids=pb.TokenIds(ids=prompt))
        tokens = [t for r in responses for t in r.token_ids]
        assert tokens == offline(config, [prompt], 24)[0]
        replicas = [r.replica_id for r in responses if r.token_ids]
        assert replicas[0] == "pd1" and replicas[-1] == "pd0" and server.router.counters.handed_off == 1
        record = server.router.migration_log[0]
        # Streamed: the stages carried the blocks the prefill completed (not none, as a move after the first
        # token would), and the commit the rest: every block of the KV it resumed with once. That is the
        # prompt's 38 blocks when the call that finds the prompt computed comes before the next step; on a
        # busy machine it may come tokens later (a newcomer's run once saw 615 tokens, 31 + 8 blocks).
        assert record.mode == "live" and record.resumed_tokens >= len(prompt)
        assert record.blocks_staged >= 1
        assert record.blocks_staged + record.blocks_at_commit == cdiv(record.resumed_tokens, 16)
    finally:
        server.close()
        for c in clients:
            ray_cluster.kill(c.handle, no_restart=True)
