"""SmolLM2 on two Ray replicas behind the real gRPC frontend: a stream migrated mid-decode with its
KV, and a replica SIGKILLed under four streams, both give Hugging Face's greedy tokens exactly.

The fake engine (test_ray_e2e.py) shows the journal's bookkeeping; this shows it on the real
model, where a resumed or resubmitted request must also compute the same next token. One
module-scoped cluster serves both tests; the kill comes last (its replica restarts).
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from shunter.proto import generation_pb2 as pb
from shunter.router.core import MigrationSettings, RouterConfig
from shunter.testing.background import BackgroundServer
from tests.hf_reference import hf_greedy

pytestmark = pytest.mark.slow

MAX_TOKENS = 24
QUESTIONS = [  # greedy answers that run the full MAX_TOKENS (checked below), so each is in flight long enough
    "Explain, step by step, how a hump yard sorts freight cars into trains.",
    "Once upon a time, in a small town next to the mountains, there lived an old signalman who",
    "What does a railway dispatcher do all day?",
    "def fibonacci(n):",
]


@pytest.fixture(scope="module")
def cluster(ray_cluster, smollm2_folder):
    """Two SmolLM2 replicas (1 CPU, so 1 torch thread each; a small KV pool), round robin, no
    rebalancing (only the tests move requests)."""
    from shunter.replica.engine_config import EngineConfig
    from shunter.router.cluster import RayReplicaClient, spawn

    config = EngineConfig(device="cpu", num_kv_blocks=64, seed=0)
    clients = [RayReplicaClient(f"smol{i}", spawn(f"smol{i}", config, num_cpus=1)) for i in range(2)]
    server = BackgroundServer(clients, RouterConfig(routing="round_robin", poll_wait_s=0.2, rebalance=False,
                                                    rejoin_timeout_s=180))
    yield server
    server.close()
    for c in clients:
        ray_cluster.kill(c.handle, no_restart=True)


@pytest.fixture(scope="module")
def prompts(cluster) -> list[list[int]]:
    tokenizer = cluster.router.info.tokenizer
    return [list(tokenizer(q).input_ids) for q in QUESTIONS]


@pytest.fixture(scope="module")
def reference(smollm2_folder, prompts) -> list[list[int]]:
    ref = hf_greedy(smollm2_folder, prompts, MAX_TOKENS)
    assert all(len(r) == MAX_TOKENS for r in ref)  # no early EOS: every stream is still running when it is moved
    return ref


def stream(server: BackgroundServer, prompt: list[int], on_chunk=None) -> tuple[list[int], list[str]]:
    """(tokens, replica of each chunk); `on_chunk(chunk, tokens so far)` runs on the reader's thread."""
    req = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=prompt),
                             sampling=pb.SamplingOptions(max_tokens=MAX_TOKENS, temperature=0))
    tokens, replicas = [], []
    for chunk in server.stub.Generate(req, timeout=300):
        tokens += chunk.token_ids
        replicas.append(chunk.replica_id)
        if on_chunk is not None:
            on_chunk(chunk, len(tokens))
    return tokens, replicas


@pytest.mark.parametrize("mode,at", [("live", (8,)), ("live", (6, 14)), ("stop-and-copy", (8,))],
                         ids=["live", "live-twice", "stop-and-copy"])
def test_a_stream_migrated_mid_decode_resumes_with_its_kv_and_hfs_tokens(cluster, prompts, reference, mode, at):
    router = cluster.router
    router.config.migration = MigrationSettings(mode=mode, commit_blocks=0)  # live: stage every full block
    resumed: list[int] = []
    for slot in router.slots.values():  # record what each import reports (tokens resumed with KV)
        real_import = slot.client.import_

        async def spy(exported, real_import=real_import):
            resumed.append(await real_import(exported))
            return resumed[-1]

        slot.client.import_ = spy
    moved: list[bool] = []

    def on_chunk(chunk, n):  # blocks the reader while the move runs, so it surely happens mid-decode
        if len(moved) < len(at) and n >= at[len(moved)]:
            target = next(r for r in router.slots if r != chunk.replica_id)
            moved.append(cluster.call(router.migrate(chunk.request_id, target)))

    migrated, recomputed = router.counters.migrated, router.counters.migrated_recomputed
    try:
        tokens, replicas = stream(cluster, prompts[0], on_chunk)
    finally:
        for slot in router.slots.values():
            del slot.client.import_
        router.config.migration = MigrationSettings()
    assert tokens == reference[0]
    assert moved == [True] * len(at) and router.counters.migrated == migrated + len(at)
    assert len(set(replicas)) == 2
    assert len(resumed) == len(at) and resumed[0] >= len(prompts[0]) + at[0] - 1  # prompt and decoded tokens as KV
    assert router.counters.migrated_recomputed == recomputed
    record = router.migration_log[-1]
    assert record.mode == mode and (record.blocks_staged > 0) == (mode == "live")


@pytest.mark.parametrize("failure", ["target_out_of_blocks", "target_died"])
def test_a_live_migration_that_aborts_leaves_the_stream_on_its_replica_with_hfs_tokens(cluster, prompts, reference,
                                                                                     failure):
    """The target refuses the reservation (a real engine out of blocks), or its process is
    SIGKILLed while a stage is on its way: the stream runs on where it was."""
    router = cluster.router
    aborted, rejoined = dict(router.counters.migrations_aborted_by), router.counters.rejoined
    moved: list[bool] = []

    def on_chunk(chunk, n):
        if n >= 8 and not moved:
            target = next(r for r in router.slots if r != chunk.replica_id)
            client = router.slots[target].client
            if failure == "target_out_of_blocks":
                real = client.reserve
                client.reserve = lambda rid, blocks: real(rid, 10**6)  # more than the pool holds
            else:
                real = client.import_blocks

                async def killed(staged):
                    pid = await client._await(client.handle.info.remote())
                    os.kill(pid.pid, signal.SIGKILL)
                    return await real(staged)

                client.import_blocks = killed
            try:
                moved.append(cluster.call(router.migrate(chunk.request_id, target)))
            finally:
                delattr(client, "reserve" if failure == "target_out_of_blocks" else "import_blocks")

    tokens, replicas = stream(cluster, prompts[1], on_chunk)
    assert tokens == reference[1] and moved == [False] and len(set(replicas)) == 1
    assert router.counters.migrations_aborted_by.get(failure, 0) == aborted.get(failure, 0) + 1
    if failure == "target_died":  # let Ray bring it back before the next test
        # Until the router has seen the death and the rejoin, every slot may still read healthy.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (
                router.counters.rejoined > rejoined and all(s.healthy for s in router.slots.values())):
            time.sleep(0.5)
        assert router.counters.rejoined > rejoined, "the killed target never rejoined"


def test_sigkill_of_a_replica_under_four_streams_every_stream_gets_hfs_tokens_and_it_rejoins(
        cluster, prompts, reference):
    router = cluster.router
    failed_over, rejoined = router.counters.failed_over, router.counters.rejoined
    killed: list[tuple[str, int]] = []

    def kill_its_replica(chunk, n):
        if n >= 6 and not killed:
            victim = router.slots[chunk.replica_id]
            killed.append((chunk.replica_id, victim.info.pid))
            os.kill(victim.info.pid, signal.SIGKILL)

    results: dict[int, tuple[list[int], list[str]]] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, stream(cluster, prompts[i], kill_its_replica if i == 0 else None))) for i in range(4)]
    [t.start() for t in threads]
    [t.join(300) for t in threads]
    assert killed and len(results) == 4
    for i in range(4):
        assert results[i][0] == reference[i], i  # no gap, no duplicate, the same greedy tokens
    assert router.counters.failed_over > failed_over
    victim_id, old_pid = killed[0]
    victim = router.slots[victim_id]
    deadline = time.time() + 180
    while not victim.healthy and time.time() < deadline:
        time.sleep(0.5)
    assert victim.healthy and router.counters.rejoined > rejoined
    assert victim.info.pid != old_pid  # Ray restarted the process
    # Round robin over two healthy replicas: of two requests, one lands on the restarted one.
    after = [stream(cluster, prompts[1]) for _ in range(2)]
    assert {r for _, reps in after for r in reps} == set(router.slots)
    assert all(tokens == reference[1] for tokens, _ in after)
