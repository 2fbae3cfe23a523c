"""The real engine and model runner over a model that costs nothing (`shunter.testing.null_model`):
the persistent batch, the staging copy, the sampler and the readback as they run on a device.
Tokens equal the null model's reference with the persistent batch (async and sync) and with
inputs packed from scratch; a decode step rewrites no row; a step syncs the device once."""
from __future__ import annotations

import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from shunter import SamplingParams
from shunter.replica.engine_config import EngineConfig
from shunter.testing.null_model import VOCAB, null_engine, null_reference

PATHS = {
    "persistent-async": dict(persistent_batch=True, async_scheduling=True),
    "persistent-sync": dict(persistent_batch=True, async_scheduling=False),
    "packed": dict(persistent_batch=False, async_scheduling=False),
}


def _engine(path: str, num_cpu_blocks: int = 0, **settings):
    settings = {"num_kv_blocks": 64, "max_num_seqs": 8, "max_num_batched_tokens": 64, "check_invariants": True,
                **PATHS[path], **settings}
    return null_engine(EngineConfig(model="null", **settings), num_cpu_blocks=num_cpu_blocks)


def _run(engine) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            got.setdefault(o.request_id, []).extend(o.new_token_ids)
        if engine.runner.batch is not None:
            engine.runner.batch.check(engine.scheduler.running)
    return got


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_tokens_equal_the_reference_under_chunking_caching_and_preemption(path, mode):
    rng = random.Random(path + mode)
    engine = _engine(path, num_cpu_blocks=64 if mode == "swap" else 0, num_kv_blocks=20, max_num_batched_tokens=32,
                     preemption_mode=mode)
    shared = [rng.randrange(1, VOCAB) for _ in range(16)]
    expected = {}
    for i in range(10):
        prompt = (shared if i % 2 else []) + [rng.randrange(1, VOCAB) for _ in range(rng.randint(4, 40))]
        n = rng.randint(20, 30)
        engine.add_request(f"r{i}", prompt, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
        expected[f"r{i}"] = null_reference(prompt, n)
    assert _run(engine) == expected
    stats = engine.stats()
    assert stats.num_preemptions > 0 and stats.kv_blocks_in_use == 0 and (stats.num_swaps > 0) == (mode == "swap")
    if engine.runner.batch is not None:
        assert len(engine.runner.batch) == 0


@pytest.mark.parametrize("path", ["persistent-async", "persistent-sync"])
def test_decode_steps_rewrite_no_row(path):
    """Once every request decodes, a step writes, at block boundaries, a block id, and each
    request's newest token only where the step reads it from the host (synchronously; an async
    decode's input is on the device): no row is written again (a rebuilt batch would rewrite
    them all)."""
    engine = _engine(path)
    for i in range(6):
        params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
        engine.add_request(f"r{i}", [1 + i] * (5 + 3 * i), params)
    while engine.scheduler.waiting or any(r.is_prefilling for r in engine.scheduler.running):
        engine.step()
    engine.step()
    writes = engine.runner.batch.writes
    rows, tokens = writes.rows, writes.tokens
    for k in range(1, 21):
        engine.step()
        assert writes.rows == rows
        assert writes.tokens - tokens == (0 if path == "persistent-async" else 6 * k)
    assert rows == 6


class _SyncCounter(TorchDispatchMode):
    """Ops that make the host wait for the device when the tensor lives there."""

    SYNCING = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default, torch.ops.aten.nonzero.default,
               torch.ops.aten.masked_select.default}

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in self.SYNCING
        return func(*args, **(kwargs or {}))


def test_the_hot_loop_syncs_the_device_once_a_step(monkeypatch):
    """Prefills, decodes, random sampling with top-k and top-p, async scheduling: each step reads
    values back once (its tokens). `.item()`, `.tolist()`, `.numpy()` or `.cpu()` on a device
    tensor anywhere else in the runner, sampler or engine would count here."""
    engine = _engine("persistent-async")
    rng = random.Random(0)
    for i in range(8):
        params = SamplingParams(max_tokens=12, temperature=rng.choice([0.0, 0.7, 1.2]), top_k=rng.choice([-1, 5]),
                                top_p=rng.choice([1.0, 0.8]), seed=i, ignore_eos=True)
        engine.add_request(f"r{i}", [rng.randrange(1, VOCAB) for _ in range(rng.randint(3, 30))], params)
    reads = {"n": 0}
    for name in ("tolist", "numpy", "cpu", "item"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    steps = 0
    with _SyncCounter() as syncs:
        while engine.has_unfinished_requests():
            engine.step()
            steps += 1
    assert steps > 12
    assert reads["n"] + syncs.count <= steps  # one readback a step (the last call only reads back)
    assert engine.runner.readback.waits == reads["n"]


def test_seeded_random_requests_repeat_alone_or_in_company():
    """A seeded request's tokens do not depend on what shares its steps (the null model's
    logits are one-hot, so temperature 2 makes every token a real draw over the vocabulary)."""
    def run(prompts: dict[str, list[int]]) -> dict[str, list[int]]:
        engine = _engine("persistent-async")
        for rid, p in prompts.items():
            engine.add_request(rid, p, SamplingParams(max_tokens=10, temperature=2.0, seed=len(rid), ignore_eos=True))
        return _run(engine)

    alone = run({"x": [5, 6, 7]})
    crowd = run({"a": [1, 2], "x": [5, 6, 7], "bbb": [9] * 20, "cc": [3]})
    assert alone["x"] == crowd["x"] and len(set(alone["x"])) > 1
