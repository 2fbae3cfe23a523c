"""KV cache layout: one (k_cache, v_cache) pair per layer, each
`[num_blocks, block_size, num_kv_heads, head_dim]` (what `shunter.kernels` reads and writes).

Kept apart from the model so the memory planner can size the pool from a config alone.
"""
from __future__ import annotations

import torch

from shunter.replica.models.config import ModelConfig


def kv_block_shape(config: ModelConfig, num_blocks: int, block_size: int) -> tuple[int, int, int, int]:
    return (num_blocks, block_size, config.num_kv_heads, config.head_dim)


def kv_bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block takes across all layers, K and V together."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * element


def allocate_kv_caches(
    config: ModelConfig,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device | str,
    pin_memory: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zeroed caches (zeros, not garbage: a padded gather of an unused slot must stay finite)."""
    shape = kv_block_shape(config, num_blocks, block_size)

    def one() -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, device=device, pin_memory=pin_memory)

    return [(one(), one()) for _ in range(config.num_layers)]
