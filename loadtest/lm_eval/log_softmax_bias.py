"""Why lm-eval's `hf` model at float32 is not the exact reference: torch's CPU `log_softmax` in
float32 over a wide vocabulary reads a little high (its sum of exponentials is accumulated in
float32), while `logits - logits.logsumexp(-1)` (what Shunter's engine computes,
`replica/sampler.py: logprobs_of`) stays unbiased.

    /tmp/lmeval-venv/bin/python loadtest/lm_eval/log_softmax_bias.py [MODEL_DIR]

Part 1 uses random logits (torch only). Part 2 runs SmolLM2 from MODEL_DIR (default: the Shunter
cache's converted folder) over each question of questions.jsonl followed by its correct answer,
with transformers at float32 and at float64, and prints each float32 way's error per token against
float64. One torch thread.
"""
from __future__ import annotations

import json
import os
import sys

import torch


def report(name: str, err: torch.Tensor) -> None:
    print(f"  {name:46s} mean {err.mean().item():+.2e}  max |.| {err.abs().max().item():.2e}  n={err.numel()}")


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("1. random logits [64, V] * 5, float32 against float64")
    for vocab in (1000, 8192, 49152):
        x = torch.randn(64, vocab) * 5
        ref = torch.log_softmax(x.double(), -1)
        report(f"V={vocab} torch.log_softmax", torch.log_softmax(x, -1).double() - ref)
        report(f"V={vocab} x - x.logsumexp", (x - x.logsumexp(-1, keepdim=True)).double() - ref)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(os.environ.get("SHUNTER_CACHE_DIR", os.path.expanduser("~/.cache/shunter")),
                           "smollm2-135m-instruct")
    path = sys.argv[1] if len(sys.argv) > 1 else default
    tok = AutoTokenizer.from_pretrained(path)
    m32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    m64 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    names = ("torch.log_softmax (lm-eval's hf)", "logits - logsumexp (Shunter's way)",
             "log_softmax in float64 of float32 logits")
    errs: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    with open(os.path.join(here, "questions.jsonl")) as f:
        docs = [json.loads(line) for line in f]
    for d in docs:
        text = f"Question: {d['question']}\nAnswer: {d['choices'][d['answer']]}"
        ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
        target = ids[0, 1:, None]
        with torch.no_grad():
            ref = torch.log_softmax(m64(ids).logits[0, :-1], -1).gather(1, target)[:, 0]
            logits = m32(ids).logits[0, :-1].float()
        ways = (torch.log_softmax(logits, -1), logits - logits.logsumexp(-1, keepdim=True),
                torch.log_softmax(logits.double(), -1))
        for errors, lp in zip(errs.values(), ways):
            errors.append(lp.gather(1, target)[:, 0].double() - ref)
    print(f"2. SmolLM2 float32 forward, {len(docs)} prompts, every token, against the float64 forward")
    for name, errors in errs.items():
        report(name, torch.cat(errors))


if __name__ == "__main__":
    main()
