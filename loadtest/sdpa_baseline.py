"""The non-paged baseline of the decode benchmark: torch SDPA over contiguous KV padded to the
longest sequence, shaped so its fast backends accept it.

Grouped-query decode asked of SDPA directly (`q [S, Hq, 1, D]` with `enable_gqa=True` and a
padding mask) leaves only the math backend: flash rejects masks and the memory-efficient backend
rejects grouped heads. Folding each KV head's group of query heads into the query length
(`q [S, Hkv, G, D]`) is the same attention with plain heads, which the memory-efficient
backend takes. `pick_backend` records which backend actually ran.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

PREFERENCE = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


def sdpa_decode(q: torch.Tensor, k_pad: torch.Tensor, v_pad: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
    """`q [S, Hq, D]` over `k_pad`/`v_pad` `[S, Hkv, L, D]` (valid up to `context_lens`), `[S, Hq, D]`.
    Query head h reads KV head h // (Hq // Hkv), as in the paged kernels."""
    S, Hq, D = q.shape
    Hkv, L = k_pad.shape[1], k_pad.shape[2]
    q_folded = q.view(S, Hkv, Hq // Hkv, D)  # the group's query heads become query positions
    mask = (torch.arange(L, device=q.device)[None, :] < context_lens[:, None].to(q.device))[:, None, None, :]
    return F.scaled_dot_product_attention(q_folded, k_pad, v_pad, attn_mask=mask).reshape(S, Hq, D)


def pick_backend(fn: Callable[[], object]) -> str:
    """The first SDPA backend in `PREFERENCE` that runs `fn` (by name)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for name in PREFERENCE:
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue
        try:
            with sdpa_kernel(backend):
                fn()
            return name
        except RuntimeError:
            continue
    raise RuntimeError("no SDPA backend runs this shape")


def with_backend(name: str, fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` restricted to one SDPA backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run() -> object:
        with sdpa_kernel(getattr(SDPBackend, name)):
            return fn()

    return run
