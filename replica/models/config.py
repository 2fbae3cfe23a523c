"""The one model description every part of the replica reads (shapes, RoPE, special tokens).

Built from a Hugging Face `config.json` dict so a checkpoint folder, a GGUF file (via the config
transformers derives from it) and our random shapes all end up as the same plain dataclass.
Both config.json styles are read: transformers < 5 (`rope_theta` + `rope_scaling`) and
transformers >= 5 (`rope_parameters`, which holds `rope_theta` too).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# model_type -> (qkv bias, o_proj bias) when the config does not say `attention_bias`.
SUPPORTED_MODEL_TYPES = {"llama": (False, False), "mistral": (False, False), "qwen2": (True, False)}
SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}
SUPPORTED_ROPE_TYPES = {"llama3", "linear"}


@dataclass
class ModelConfig:
    """Shapes and constants of a Llama-family decoder (Llama 2/3, SmolLM2, Mistral, Qwen2)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "llama3" | "linear", ...}
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v (Qwen2; Llama with attention_bias=True)
    o_proj_bias: bool = False  # bias on o_proj (only Llama with attention_bias=True)
    mlp_bias: bool = False
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    model_type: str = "llama"

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        self.rope_scaling = normalize_rope_scaling(self.rope_scaling)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> "ModelConfig":
        """Read a Hugging Face `config.json` dict; unsupported architectures raise `ValueError`."""
        model_type = hf.get("model_type", "llama")
        archs = set(hf.get("architectures") or [])
        if model_type not in SUPPORTED_MODEL_TYPES or (archs and not archs & SUPPORTED_ARCHITECTURES):
            raise ValueError(
                f"unsupported model (model_type={model_type!r}, architectures={sorted(archs)}); "
                f"supported: {sorted(SUPPORTED_ARCHITECTURES)}"
            )
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r}: only silu (SwiGLU) is implemented")
        num_heads = hf["num_attention_heads"]
        qkv_bias, o_bias = SUPPORTED_MODEL_TYPES[model_type]
        if "attention_bias" in hf and model_type == "llama":
            qkv_bias = o_bias = bool(hf["attention_bias"])
        theta, scaling = _rope_from_hf(hf)
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            max_position_embeddings=_max_positions(hf, model_type),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=qkv_bias,
            o_proj_bias=o_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            eos_token_ids=as_id_list(hf.get("eos_token_id")),
            bos_token_id=hf.get("bos_token_id"),
            model_type=model_type,
        )

    def to_hf_config(self) -> dict[str, Any]:
        """A `config.json` dict transformers' `LlamaForCausalLM` / `Qwen2ForCausalLM` accepts."""
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
        hf: dict[str, Any] = {
            "architectures": [arch[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else list(self.eos_token_ids),
        }
        if self.model_type == "llama":
            hf["attention_bias"] = self.attention_bias
            hf["mlp_bias"] = self.mlp_bias
        return hf

    def num_parameters(self) -> int:
        """Parameter count (tied embeddings counted once): sizes memory before anything is built."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h
        attn += (q + 2 * kv) * self.attention_bias + h * self.o_proj_bias
        mlp = 3 * h * self.intermediate_size + (2 * self.intermediate_size + h) * self.mlp_bias
        layer = attn + mlp + 2 * h
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + embed + h


def as_id_list(value: Any) -> list[int]:
    """`eos_token_id` may be None, an int or a list in HF configs."""
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def normalize_rope_scaling(scaling: dict[str, Any] | None) -> dict[str, Any] | None:
    """None for plain RoPE; else a dict with `rope_type` set; unsupported types raise `ValueError`."""
    if not scaling:
        return None
    out = {k: v for k, v in scaling.items() if k not in ("rope_theta", "type")}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return None
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"unsupported rope scaling type {rope_type!r}; supported: {sorted(SUPPORTED_ROPE_TYPES)}")
    out["rope_type"] = rope_type
    required = ["factor"] + (
        ["low_freq_factor", "high_freq_factor", "original_max_position_embeddings"] if rope_type == "llama3" else []
    )
    missing = [k for k in required if k not in out]
    if missing:
        raise ValueError(f"rope scaling {rope_type!r} lacks {missing}")
    return out


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params:  # per-layer-type form; these models have one type
        params = params["full_attention"]
    scaling = {**(hf.get("rope_scaling") or {}), **params}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    return theta, normalize_rope_scaling(scaling)


def _max_positions(hf: dict[str, Any], model_type: str) -> int:
    """A sliding window narrower than the context is not implemented (full attention is): cap
    the context at the window, where both are the same thing."""
    max_pos = int(hf.get("max_position_embeddings", 2048))
    window = hf.get("sliding_window")
    uses_window = hf.get("use_sliding_window", True) if model_type == "qwen2" else True
    if window and uses_window and window < max_pos:
        log.warning("sliding_window %d < max_position_embeddings %d: context capped at the window", window, max_pos)
        return int(window)
    return max_pos
