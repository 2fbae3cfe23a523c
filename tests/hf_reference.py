"""Hugging Face's greedy tokens for the real default model: the oracle that the engine (tests/replica)
and the served cluster (tests/router) are both held to, token for token."""
from __future__ import annotations

from pathlib import Path

import torch


def hf_greedy(folder: Path, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """HF `generate`, greedy, float32 on the CPU, one prompt at a time (no padding in the reference)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    outs = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False)
            outs.append(gen[0, len(p):].tolist())
    return outs


def hf_log_softmax(folder: Path, sequences: list[list[int]]) -> list[torch.Tensor]:
    """HF's log-softmax over the vocabulary at every position of each sequence, float32 on the
    CPU: row `q` is the distribution of token `q + 1`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        return [model(torch.tensor([s])).logits[0].float().log_softmax(-1) for s in sequences]
