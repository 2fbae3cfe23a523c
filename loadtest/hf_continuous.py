"""The Hugging Face continuous-batching baseline (what `generate_batch` runs), set up fairly: the
same per-step token and sequence budget as Shunter, freed device memory before it sizes its cache
from what is free, and a warm-up before the clock starts."""
from __future__ import annotations

import dataclasses
import inspect
import time
from typing import Any

from shunter.loadtest.bench_offline import Workload
from shunter.loadtest.roofline import release_memory, sync


def budget_arguments(manager_fn, generation_config, max_batch_tokens: int, max_seqs: int) -> tuple[dict, dict]:
    """(keyword arguments for `continuous_batching_context_manager`, the budget as applied).

    transformers 5 takes a `ContinuousBatchingConfig` (max_batch_tokens, max_requests_per_batch);
    releases without it read max_batch_tokens from the GenerationConfig."""
    try:
        from transformers import ContinuousBatchingConfig
    except ImportError:
        ContinuousBatchingConfig = None
    wanted = {"max_batch_tokens": max_batch_tokens, "max_requests_per_batch": max_seqs}
    if ContinuousBatchingConfig is not None and "continuous_batching_config" in inspect.signature(manager_fn).parameters:
        fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
        applied = {k: v for k, v in wanted.items() if k in fields}
        return {"continuous_batching_config": ContinuousBatchingConfig(**applied)}, {**applied, "via": "ContinuousBatchingConfig"}
    generation_config.max_batch_tokens = max_batch_tokens
    return {}, {"max_batch_tokens": max_batch_tokens, "via": "GenerationConfig"}


def _collect(manager, ids: list[str]) -> dict[str, int]:
    """Generated-token counts of `ids`, waiting until all have finished."""
    done: dict[str, int] = {}
    while len(done) < len(ids):
        result = manager.get_result(timeout=1)
        if result is not None and result.is_finished():
            done[result.request_id] = len(result.generated_tokens)
        elif result is None and not manager.is_running():
            raise RuntimeError("transformers' continuous batching stopped before finishing")
    return done


def run_hf_continuous(work: Workload, folder, device: str, dtype: str, max_batch_tokens: int,
                      max_seqs: int) -> tuple[float, dict[str, Any]]:
    """Seconds for the workload (each request its own number of new tokens, EOS off) and the budget applied."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    release_memory(device)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype),
                                                 attn_implementation="paged|sdpa").to(device).eval()
    config = GenerationConfig(max_new_tokens=max(work.output_lens), do_sample=False, eos_token_id=-1, pad_token_id=0)
    extra, budget = budget_arguments(model.continuous_batching_context_manager, config, max_batch_tokens, max_seqs)
    with model.continuous_batching_context_manager(generation_config=config, block=True, timeout=5, **extra) as manager:
        warm = [manager.add_request(p[:16], max_new_tokens=2) for p in work.prompts[:2]]
        _collect(manager, warm)
        sync(device)
        start = time.perf_counter()
        ids = [manager.add_request(p, max_new_tokens=n) for p, n in zip(work.prompts, work.output_lens)]
        done = _collect(manager, ids)
        sync(device)
        elapsed = time.perf_counter() - start
    made = [done[i] for i in ids]
    if made != work.output_lens:
        raise RuntimeError(f"generate_batch made {sum(made)} tokens, {work.useful_tokens} were asked")
    del model
    release_memory(device)
    return elapsed, budget
