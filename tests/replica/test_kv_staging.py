"""Blocks read for a migration land in host memory before anyone reads them, and travel as a plain list."""
from __future__ import annotations

import pickle

import pytest
import torch

from shunter.replica import kv_staging


def caches(device: str, num_blocks: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    make = lambda: torch.randn(num_blocks, 4, 2, 8, generator=gen).to(device)  # noqa: E731
    return [(make(), make()) for _ in range(3)]


def check(kv_caches, staged, ids):
    layers = kv_staging.landed(staged)
    assert len(layers) == len(kv_caches)
    for (k, v), (sk, sv) in zip(kv_caches, layers):
        assert sk.device.type == "cpu" and torch.equal(sk, k[ids].cpu()) and torch.equal(sv, v[ids].cpu())
    plain = pickle.loads(pickle.dumps(staged))
    assert type(plain) is list and all(torch.equal(a[0], b[0]) for a, b in zip(plain, layers))


def test_cpu_blocks_are_read_whole():
    kv = caches("cpu")
    check(kv, kv_staging.read(kv, [4, 1]), [4, 1])


@pytest.mark.gpu
def test_gpu_blocks_land_in_pinned_memory_and_wait_before_they_are_read():
    kv = caches("cuda", 64)
    staged = kv_staging.read(kv, [5, 2, 40])
    assert staged[0][0].is_pinned()
    for k, v in kv:  # later work on the stream must not change what was staged
        k.zero_()
    check([(k, v) for k, v in caches("cuda", 64)], staged, [5, 2, 40])
