"""Baselines are measured fairly on any CUDA device name: the same sync for "cuda:0" as for
"cuda", and HF continuous batching gets Shunter's token and sequence budget."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from shunter.loadtest import roofline
from shunter.loadtest.hf_continuous import budget_arguments


def test_an_indexed_cuda_device_is_synced_like_cuda(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(str(device)))
    roofline.sync("cuda:0")
    roofline.sync(torch.device("cuda", 1))
    roofline.sync("cpu")
    assert synced == ["cuda:0", "cuda:1"]
    assert roofline.is_cuda("cuda:0") and roofline.is_cuda("cuda") and not roofline.is_cuda("cpu")


def test_hf_continuous_batching_gets_shunters_budget():
    from transformers import GenerationConfig, LlamaForCausalLM

    extra, applied = budget_arguments(LlamaForCausalLM.continuous_batching_context_manager, GenerationConfig(), 2048, 256)
    cb = extra["continuous_batching_config"]
    assert applied["via"] == "ContinuousBatchingConfig"
    assert (cb.max_batch_tokens, cb.max_requests_per_batch) == (2048, 256)


def test_budget_falls_back_to_the_generation_config_on_older_transformers():
    def old_manager(generation_config=None, block=True, timeout=None):
        """A release whose context manager takes no ContinuousBatchingConfig."""

    config = SimpleNamespace()
    extra, applied = budget_arguments(old_manager, config, 512, 64)
    assert extra == {} and config.max_batch_tokens == 512 and applied["via"] == "GenerationConfig"
