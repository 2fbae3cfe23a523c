"""The engine's GPU path (bfloat16 weights and cache, Triton kernels) against Hugging Face on the
same device and dtype. Greedy tokens must match except where bfloat16 ties: the first token that
differs must be one where the reference's top two logits are within 1e-3 of each other."""
from __future__ import annotations

import pytest
import torch

from shunter import LLM, SamplingParams

pytestmark = pytest.mark.gpu

PROMPTS = [
    "What is a shunting yard?",
    "Write a haiku about trains at night.",
    "1, 2, 3, 5, 8, 13,",
    "def fibonacci(n):",
    "The capital of France is",
    "Explain, step by step, how a hump yard sorts freight cars into trains by destination.",
]
MAX_TOKENS = 32


def test_greedy_on_cuda_equals_hf_up_to_bfloat16_ties(smollm2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    prompts = [list(tokenizer(p).input_ids) for p in PROMPTS]
    llm = LLM(model="smollm2-135m-instruct", device="cuda", check_invariants=True)
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0))]
    del llm
    hf = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.bfloat16).to("cuda").eval()
    ties = 0
    with torch.inference_mode():
        for prompt, ours in zip(prompts, got):
            ids = torch.tensor([prompt], device="cuda")
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_TOKENS, do_sample=False)
            ref = ref[0, len(prompt):].tolist()
            if ours == ref:
                continue
            i = next(k for k, (a, b) in enumerate(zip(ours, ref)) if a != b)
            logits = hf(torch.tensor([prompt + ref[:i]], device="cuda")).logits[0, -1].float()
            top2 = torch.topk(logits, 2).values
            assert float(top2[0] - top2[1]) < 1e-3, f"prompt {prompt[:8]}...: token {i} differs without a tie"
            ties += 1
    print(f"{ties} of {len(prompts)} prompts diverged at a bfloat16 tie")
