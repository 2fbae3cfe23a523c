"""Random paged KV caches and batches for the kernel tests (shared by CPU and GPU tests)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

TOLERANCE = {torch.float32: 2e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@dataclass
class Paged:
    k_cache: torch.Tensor  # blocks past each context are poisoned with NaN
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # int32 [S, max_blocks], shuffled ids, garbage past the context
    context_lens: torch.Tensor  # int32 [S]

    def clean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 caches without the poison, for the reference (whose masked SDPA sees NaN)."""
        return self.k_cache.float().nan_to_num(0.0), self.v_cache.float().nan_to_num(0.0)


def make_paged(
    context_lens: list[int], num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype,
    seed: int = 0, device: str = "cpu", spare_blocks: int = 3,
) -> Paged:
    """Each sequence gets its blocks at random places in the pool; every cache slot that no
    sequence owns up to its context length holds NaN, so a kernel reading past a context fails."""
    gen = torch.Generator().manual_seed(seed)
    need = [(n + block_size - 1) // block_size for n in context_lens]
    width = max(need) + 1
    num_blocks = sum(need) + spare_blocks
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k = torch.full(shape, float("nan"))
    v = torch.full(shape, float("nan"))
    perm = torch.randperm(num_blocks, generator=gen)
    tables = torch.randint(0, num_blocks, (len(context_lens), width), generator=gen)
    used = 0
    for s, (n, nb) in enumerate(zip(context_lens, need)):
        ids = perm[used:used + nb]
        used += nb
        tables[s, :nb] = ids
        flat_k, flat_v = k[ids].view(-1, num_kv_heads, head_dim), v[ids].view(-1, num_kv_heads, head_dim)
        flat_k[:n] = torch.randn(n, num_kv_heads, head_dim, generator=gen)
        flat_v[:n] = torch.randn(n, num_kv_heads, head_dim, generator=gen)
        k[ids], v[ids] = flat_k.view(nb, block_size, num_kv_heads, head_dim), flat_v.view(nb, block_size, num_kv_heads, head_dim)
    return Paged(k.to(device, dtype), v.to(device, dtype), tables.to(device, torch.int32),
                 torch.tensor(context_lens, dtype=torch.int32, device=device))


def cu_seqlens(q_lens: list[int], device: str = "cpu") -> torch.Tensor:
    out = [0]
    for n in q_lens:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=device)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype]
    assert not out.isnan().any(), "NaN in the kernel output (read past a context?)"
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
