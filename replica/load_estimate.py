"""How many KV blocks a request will take: the one estimate behind every load number.

The engine's load report, the router's placement and the rebalancer's choice of what to move
all count a request the same way: the blocks of its prompt plus its expected output (the
request's `expected_output_tokens` hint, else `max_tokens`). A request that has already run
past its expectation will take no more than it holds: its remaining growth is clipped at zero
on its own (`Engine.stats`), so it never hides the growth of the others.
"""
from __future__ import annotations

from shunter.mathutil import cdiv
from shunter.sampling_params import SamplingParams


def expected_tokens(num_prompt_tokens: int, params: SamplingParams) -> int:
    """Prompt plus the output the request is expected to make."""
    expected = params.expected_output_tokens
    return num_prompt_tokens + (params.max_tokens if expected is None else min(expected, params.max_tokens))


def expected_blocks(num_prompt_tokens: int, params: SamplingParams, block_size: int, num_tokens: int = 0) -> int:
    """Blocks the request will hold at its expected end (at least what `num_tokens` take now)."""
    return cdiv(max(expected_tokens(num_prompt_tokens, params), num_tokens), block_size)
