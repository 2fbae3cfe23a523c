"""The real engine and model runner over a model that costs nothing: for `bench step` and tests.

`null_engine` builds the real `Engine` (scheduler, KV cache manager, policy) over the real
`ModelRunner` (persistent batch, staging, sampler, readback) whose model returns at once, so
what a step costs is the host's work alone. The model is not a constant: its logits put all mass
on `(31 * token + 7 * position) % vocab`, so the next token depends on the last input token and
its position, and an input taken from the wrong place (a placeholder filled badly) changes the
tokens: `null_reference` is what any correct run must produce.
"""
from __future__ import annotations

import torch

from shunter.replica.attention_metadata import AttentionMetadata
from shunter.replica.engine import Engine
from shunter.replica.engine_config import EngineConfig
from shunter.replica.model_runner import ModelRunner
from shunter.replica.models.config import ModelConfig
from shunter.replica.models.loader import LoadedModel

VOCAB = 64
EOS = 0


def null_next(token: int, position: int, vocab_size: int = VOCAB) -> int:
    return (31 * token + 7 * position) % vocab_size


class NullModel(torch.nn.Module):
    """`forward` and `compute_logits` with `LlamaModel`'s signatures, one tiny op each."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # the runner reads device and dtype here

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list,
                attn: AttentionMetadata) -> torch.Tensor:
        return ((31 * input_ids + 7 * positions) % self.config.vocab_size)[:, None].float()

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(hidden[:, 0].long(), self.config.vocab_size).float()


def null_config(max_model_len: int, vocab_size: int = VOCAB) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, hidden_size=1, intermediate_size=1, num_layers=1, num_heads=1,
                       num_kv_heads=1, head_dim=1, max_position_embeddings=max_model_len, eos_token_ids=[EOS])


def null_engine(config: EngineConfig, max_model_len: int = 4096, num_cpu_blocks: int = 0) -> Engine:
    """`config.num_kv_blocks` must be set (nothing is measured to size the pool); the model goes
    to `config.device` (default: the CPU)."""
    assert config.num_kv_blocks is not None, "a null engine needs num_kv_blocks"
    model_config = null_config(max_model_len)
    model = NullModel(model_config).to(config.device or "cpu")
    loaded = LoadedModel(model, model_config, None, "null")
    runner = ModelRunner(loaded, config.num_kv_blocks, config.block_size, num_cpu_blocks, max_model_len,
                         config.max_num_seqs, config.max_num_batched_tokens, config.persistent_batch)
    return Engine(config, runner=runner)


def null_reference(prompt: list[int], max_tokens: int, vocab_size: int = VOCAB) -> list[int]:
    """Greedy tokens of the null model for `prompt` (EOS ignored)."""
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(null_next(tokens[-1], len(tokens) - 1, vocab_size))
    return tokens[len(prompt):]
