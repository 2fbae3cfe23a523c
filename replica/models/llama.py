"""Our Llama-family decoder (Llama 2/3, SmolLM2, Mistral, Qwen2) over a ragged, paged batch.

No padding and no batch dimension: a step is T tokens of many sequences laid end to end, and
every attention layer writes its new K/V into the paged cache and attends through it with
`shunter.kernels`. Module names equal Hugging Face's, so a HF state dict loads as it is.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from shunter.kernels import ops as kernels
from shunter.replica.attention_metadata import AttentionMetadata
from shunter.replica.models.config import ModelConfig
from shunter.replica.models.rope import apply_rotary, cos_sin, inv_frequencies

KVCache = tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    """Normalized in float32 whatever the model dtype, as HF does, then cast back and scaled."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


class Attention(nn.Module):
    """GQA self-attention; K/V go through the paged cache, never kept per sequence."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, d
        self.scale = d**-0.5
        self.q_proj = nn.Linear(h, config.num_heads * d, bias=config.attention_bias)
        self.k_proj = nn.Linear(h, config.num_kv_heads * d, bias=config.attention_bias)
        self.v_proj = nn.Linear(h, config.num_kv_heads * d, bias=config.attention_bias)
        self.o_proj = nn.Linear(config.num_heads * d, h, bias=config.o_proj_bias)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache: KVCache, attn: AttentionMetadata
    ) -> torch.Tensor:
        T = x.shape[0]
        q = apply_rotary(self.q_proj(x).view(T, self.num_heads, self.head_dim), cos, sin)
        k = apply_rotary(self.k_proj(x).view(T, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(T, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = kv_cache
        kernels.write_kv_cache(k, v, k_cache, v_cache, attn.slot_mapping)
        o = kernels.attention(
            q, k_cache, v_cache, attn.block_tables, attn.cu_seqlens_q, attn.context_lens, attn.max_query_len, self.scale
        )
        return self.o_proj(o.reshape(T, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache: KVCache, attn: AttentionMetadata
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, attn)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """HF's `model.` prefix: embeddings, layers, final norm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # Zeros, not nn.Embedding's normal_ init: on the meta device normal_ imports torch._dynamo
        # (~2.5 s of every load), and loaders overwrite the weights anyway.
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, _weight=torch.zeros(config.vocab_size, config.hidden_size)
        )
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaModel(nn.Module):
    """`forward` -> hidden states `[T, hidden]`; `compute_logits` only for the rows sampled."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.register_buffer("inv_freq", torch.empty(0), persistent=False)
        self.reset_rope()
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def reset_rope(self) -> None:
        """Recompute the (non-persistent) RoPE buffer, e.g. after loading into a meta skeleton.
        Computed on the CPU: arithmetic on meta tensors imports torch._dynamo (~2 s)."""
        self.inv_freq = inv_frequencies(self.config, "cpu").to(self.model.embed_tokens.weight.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        attn: AttentionMetadata,
    ) -> torch.Tensor:
        """input_ids, positions: int64 `[T]`; one (k_cache, v_cache) per layer."""
        x = self.model.embed_tokens(input_ids)
        cos, sin = cos_sin(self.inv_freq, positions, x.dtype)
        for layer, kv_cache in zip(self.model.layers, kv_caches, strict=True):
            x = layer(x, cos, sin, kv_cache, attn)
        return self.model.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 `[N, vocab]` (the sampler works in float32 whatever the model dtype)."""
        return self.lm_head(hidden).float()

    def load_hf_state_dict(self, tensors: Mapping[str, torch.Tensor], assign: bool = False) -> None:
        """Load a HF checkpoint's tensors (names as in HF). Strict except that a tied model may
        lack (or carry a copy of) `lm_head.weight`; stale `rotary_emb.inv_freq` buffers are ignored."""
        state = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
        if self.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        missing, unexpected = self.load_state_dict(state, strict=False, assign=assign)
        allowed = {"lm_head.weight"} if self.config.tie_word_embeddings else set()
        missing = [k for k in missing if k not in allowed]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")
        self.tie_weights()
        if assign:
            self.reset_rope()
