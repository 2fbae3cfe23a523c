"""A running request packed for a move to another replica: its state and its KV blocks."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from shunter.sampling_params import SamplingParams


@dataclass
class MigrationState:
    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    num_computed_tokens: int
    num_cached_tokens: int
    # Per layer (k, v) of shape [num_blocks, block_size, num_kv_heads, head_dim] on the CPU,
    # covering the first num_computed_tokens tokens; None means the target recomputes.
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    block_size: int = 16
    rng_state: torch.Tensor | None = None  # the request's sampling generator, so seeded sampling continues
