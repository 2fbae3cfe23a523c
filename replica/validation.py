"""The one request validator: the gRPC frontend, `LLM` and the engine all call `validate_request`.

`SamplingParams` checks its own fields when it is built; what is checked here needs the model:
the prompt's token ids, its length against the context, the KV blocks one request may hold.
Every message starts with the field's name (`field_prefix` says where the field sits, e.g.
"sampling." in a gRPC request), so a client knows what to fix.
"""
from __future__ import annotations

from typing import Sequence

from shunter.mathutil import cdiv
from shunter.replica.engine_protocol import ModelLimits
from shunter.sampling_params import SamplingParams

_INT_TYPES = {int, bool}  # what isinstance(t, int) accepts among ids a client can send


def validate_request(prompt_token_ids: Sequence[int], params: SamplingParams, limits: ModelLimits,
                     prompt_field: str = "prompt_token_ids", field_prefix: str = "") -> None:
    """Raise ValueError naming the field for anything an engine with `limits` cannot serve."""
    if not isinstance(params, SamplingParams):
        raise ValueError(f"sampling_params: must be a SamplingParams, got {type(params).__name__}")
    if params.n != 1:
        raise ValueError(f"{field_prefix}n: an engine runs one sequence per request, got n={params.n} "
                         "(LLM.generate runs n samples as n requests)")
    n = len(prompt_token_ids)
    if n == 0:
        raise ValueError(f"{prompt_field}: must not be empty")
    vocab = limits.vocab_size
    # Each id is looked at in C (every request of every simulated replica comes through here);
    # only a prompt that fails is walked in Python, to name the first bad id.
    if not (set(map(type, prompt_token_ids)) <= _INT_TYPES and min(prompt_token_ids) >= 0
            and max(prompt_token_ids) < vocab):
        for t in prompt_token_ids:  # `None` is a bad id too, so no `next(..., None)` here
            if not isinstance(t, int) or not 0 <= t < vocab:
                raise ValueError(f"{prompt_field}: token id {t!r} is outside the vocabulary [0, {vocab})")
    bad = next((t for t in params.stop_token_ids if t >= vocab), None)
    if bad is not None:
        raise ValueError(f"{field_prefix}stop_token_ids: token id {bad} is outside the vocabulary [0, {vocab})")
    if n >= limits.max_model_len:
        raise ValueError(f"{prompt_field}: the prompt ({n} tokens) leaves no room for output in the model's "
                         f"context of {limits.max_model_len} tokens")
    total = n + params.max_tokens
    if total > limits.max_model_len:
        raise ValueError(f"{field_prefix}max_tokens: prompt ({n} tokens) + max_tokens ({params.max_tokens}) = "
                         f"{total} exceeds the model's context of {limits.max_model_len} tokens; "
                         f"at most {limits.max_model_len - n} fit")
    if cdiv(n + 1, limits.block_size) > limits.num_kv_blocks:
        raise ValueError(f"{prompt_field}: the prompt ({n} tokens) needs more KV blocks than the replica has "
                         f"({limits.num_kv_blocks} blocks of {limits.block_size} tokens)")
    if cdiv(total, limits.block_size) > limits.num_kv_blocks:
        raise ValueError(f"{field_prefix}max_tokens: prompt + max_tokens ({total} tokens) needs more KV blocks than "
                         f"the replica has ({limits.num_kv_blocks} blocks of {limits.block_size} tokens)")
