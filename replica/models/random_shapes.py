"""`random:<shape>` models: real shapes, seeded random weights, no tokenizer.

They let the engine run (and be benchmarked) at the size of a real model without any download.
Weights are created directly in the target dtype on the target device, one tensor at a time
from a meta-device skeleton, so Llama-3-8B builds in seconds in bf16 on a GPU and never needs a
32 GB float32 copy on the host. The init keeps logits sane: each layer adds an O(1) update to
the residual stream and the logits have a standard deviation of about 4.

torch is imported only to build one, so the CLI can check a `random:` name before Ray starts.
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

from shunter.replica.models.config import ModelConfig

if TYPE_CHECKING:
    import torch

    from shunter.replica.models.llama import LlamaModel

LLAMA3_EOS = [128001, 128008, 128009]

RANDOM_SHAPES: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=2048,
        tie_word_embeddings=False, eos_token_ids=[2], bos_token_id=1,
    ),
    "llama-3.2-1b": ModelConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8,
        head_dim=64, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=True,
        eos_token_ids=LLAMA3_EOS, bos_token_id=128000,
    ),
    "llama-3-8b": ModelConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
        head_dim=128, rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
        tie_word_embeddings=False, eos_token_ids=[128001, 128009], bos_token_id=128000,
    ),
}


def random_config(shape: str) -> ModelConfig:
    if shape not in RANDOM_SHAPES:
        raise ValueError(f"unknown random model shape {shape!r}; known: {sorted(RANDOM_SHAPES)}")
    return copy.deepcopy(RANDOM_SHAPES[shape])


def _std(name: str, tensor: torch.Tensor, config: ModelConfig) -> float:
    """Per-tensor init scale (see the module docstring)."""
    logits_std = 4.0 / math.sqrt(config.hidden_size)
    if name == "lm_head.weight" or (name == "model.embed_tokens.weight" and config.tie_word_embeddings):
        return logits_std
    if name == "model.embed_tokens.weight":
        return 1.0
    fan_in = tensor.shape[-1]
    std = 1.0 / math.sqrt(fan_in)
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        std /= math.sqrt(2 * config.num_layers)
    return std


def build_random_model(
    config: ModelConfig, dtype: torch.dtype, device: torch.device | str, seed: int = 0
) -> LlamaModel:
    """Deterministic for a given (config, seed, device type): one generator, tensors in name order."""
    import torch

    from shunter.replica.models.llama import LlamaModel

    device = torch.device(device)
    with torch.device("meta"):
        model = LlamaModel(config)
    generator = torch.Generator(device=device).manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():  # a tied lm_head is yielded once, as the embedding
        t = torch.empty(param.shape, dtype=dtype, device=device)
        if name.endswith("norm.weight"):
            t.fill_(1.0)
        elif name.endswith(".bias"):
            t.zero_()
        else:
            t.normal_(0.0, _std(name, t, config), generator=generator)
        tensors[name] = t
    model.load_hf_state_dict(tensors, assign=True)
    return model
