"""llama.cpp on the same GGUF, one request at a time: `bench offline --llama-cpp`'s baseline.

What a user without a serving engine runs on a CPU: `llama-cpp-python` over the file Shunter
de-quantizes (SmolLM2's Q4_1 GGUF, which llama.cpp computes in its own quantized kernels), each
request prefilled and then decoded greedily for exactly its output length, one after another.
`llama-cpp-python` is optional (`pip install llama-cpp-python`, which compiles llama.cpp): it is
not in the lock, and the bench says how to get it when it is missing.
"""
from __future__ import annotations

import time
from pathlib import Path


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def run_llama_cpp(gguf: Path, prompts: list[list[int]], output_lens: list[int], threads: int) -> dict:
    """Seconds for every request in turn, and each one's greedy token ids."""
    from llama_cpp import Llama

    n_ctx = max(len(p) + n for p, n in zip(prompts, output_lens)) + 8
    llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    _generate(llm, prompts[0][:16], 2)  # warm-up: buffers allocated before the clock starts
    outputs = []
    started = time.perf_counter()
    for prompt, n in zip(prompts, output_lens):
        outputs.append(_generate(llm, prompt, n))
    return {"seconds": time.perf_counter() - started, "threads": threads, "n_ctx": n_ctx, "token_ids": outputs}


def _generate(llm, prompt: list[int], n: int) -> list[int]:
    """Exactly `n` greedy tokens after `prompt` (EOS is a token like any other: the bench ignores it)."""
    llm.reset()
    tokens = []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        tokens.append(token)
        if len(tokens) == n:
            break
    return tokens
