"""The largest step the scheduler may issue, run once on dummy input before the KV pool exists,
so its memory peak can be measured (see `memory.activation_peak`)."""
from __future__ import annotations

import torch

from shunter.replica.attention_metadata import AttentionMetadata
from shunter.replica.kv_cache_manager import cdiv
from shunter.replica.models.config import ModelConfig
from shunter.replica.models.kv_layout import allocate_kv_caches


@torch.inference_mode()
def run_dummy_step(model: torch.nn.Module, config: ModelConfig, block_size: int, num_tokens: int, num_rows: int,
                   dtype: torch.dtype, device: torch.device) -> None:
    """A prefill of `num_tokens` tokens of one sequence, then the LM head and a float32 softmax on
    `num_rows` rows (what sampling makes of them). Nothing is stored (every slot is -1) and
    attention reads one scratch block, so no KV pool is needed."""
    caches = allocate_kv_caches(config, 1, block_size, dtype, device)
    attn = AttentionMetadata(
        slot_mapping=torch.full((num_tokens,), -1, dtype=torch.long, device=device),
        block_tables=torch.zeros(1, cdiv(num_tokens, block_size), dtype=torch.int32, device=device),
        cu_seqlens_q=torch.tensor([0, num_tokens], dtype=torch.int32, device=device),
        context_lens=torch.tensor([num_tokens], dtype=torch.int32, device=device),
        max_query_len=num_tokens,
    )
    input_ids = torch.zeros(num_tokens, dtype=torch.long, device=device)
    hidden = model(input_ids, torch.arange(num_tokens, device=device), caches, attn)
    rows = hidden[torch.arange(num_rows, device=device) % num_tokens]
    model.compute_logits(rows).float().softmax(-1)
