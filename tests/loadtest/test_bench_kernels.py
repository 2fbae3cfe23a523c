"""The kernel benchmark's pieces on the CPU: the SDPA baseline's folded shape is the same
attention, backends are picked by what runs, times are per call over many calls (the whole bench at
toy size in Triton's interpreter is scripts/gpu-check.sh's smoke: tests/scripts/test_gpu_check.py)."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from shunter.loadtest.kernel_timing import time_per_call_ms
from shunter.loadtest.sdpa_baseline import pick_backend, sdpa_decode


def test_folded_sdpa_equals_grouped_masked_attention():
    gen = torch.Generator().manual_seed(0)
    S, Hq, Hkv, L, D = 3, 8, 2, 20, 64
    q = torch.randn(S, Hq, D, generator=gen)
    k, v = torch.randn(S, Hkv, L, D, generator=gen), torch.randn(S, Hkv, L, D, generator=gen)
    ctx = torch.tensor([5, 20, 9])
    mask = (torch.arange(L)[None, :] < ctx[:, None])[:, None, None, :]
    grouped = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=mask, enable_gqa=True)[:, :, 0]
    torch.testing.assert_close(sdpa_decode(q, k, v, ctx), grouped)


def test_backend_is_the_first_that_runs():
    def refuses_flash():
        if torch.backends.cuda.flash_sdp_enabled():
            raise RuntimeError("flash attention takes no mask")

    assert pick_backend(refuses_flash) == "EFFICIENT_ATTENTION"
    assert pick_backend(lambda: None) == "FLASH_ATTENTION"


def test_time_is_per_call_over_many_calls():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.002)

    ms, method = time_per_call_ms(fn, "cpu", samples=3, calls=5)
    assert method == "wall" and len(calls) == 1 + 3 * 5  # one warm-up call
    assert 1.5 < ms < 20
