"""Paged-attention ops. Each dispatches to a Triton kernel for CUDA tensors (or under
`TRITON_INTERPRET=1`) and to its torch reference twin otherwise.

The choice is made at call time, and Triton is imported only when it is wanted, so the CPU
engine never pays for it and an environment without Triton falls back to the reference. Triton
decides compiled-vs-interpreted when a kernel is decorated, so the kernel modules are imported
lazily and re-imported if `TRITON_INTERPRET` changed since (tests set it per test). Note that
Triton 3.9's interpreter fails in a process where a kernel was already compiled for a GPU.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from shunter.kernels import interpreter_compat, reference

__all__ = [
    "write_kv_cache", "paged_attention_decode", "paged_attention_prefill", "attention", "copy_blocks", "triton_kernels",
    "compiled_variants",
]

_KERNEL_MODULES = ("triton_common", "triton_cache", "triton_decode", "triton_prefill")
_loaded: dict[str, ModuleType] = {}
_triton_missing = False


def triton_kernels(*tensors: torch.Tensor) -> dict[str, ModuleType] | None:
    """The Triton kernel modules by name (`triton_decode`, ...), built in the mode wanted now:
    compiled when some tensor is on CUDA, interpreted under `TRITON_INTERPRET`; None when the
    torch reference should run (CPU tensors without the interpreter, or no Triton installed)."""
    global _triton_missing
    if _triton_missing or not (os.environ.get("TRITON_INTERPRET") or any(t.is_cuda for t in tensors)):
        return None
    try:
        import triton
    except ImportError:
        _triton_missing = True
        return None
    interpret = bool(triton.knobs.runtime.interpret)
    if not interpret and not any(t.is_cuda for t in tensors):
        return None
    return load_triton_kernels(interpret)


def load_triton_kernels(interpret: bool) -> dict[str, ModuleType]:
    """Import (or re-import) the kernel modules so that they were decorated with Triton's
    interpreter on or off as asked; `TRITON_INTERPRET` must already say the same."""
    if interpret:
        interpreter_compat.apply()
    for name in _KERNEL_MODULES:  # dependency order: the others import names from triton_common
        module = _loaded.get(name) or importlib.import_module(f"shunter.kernels.{name}")
        if module.INTERPRETED != interpret:
            module = importlib.reload(module)  # in place: the module object stays the same
        _loaded[name] = module
    return _loaded


def compiled_variants() -> int:
    """How many compiled binaries (kernel x specialization) the loaded Triton kernels hold. A
    benchmark reads it before and after its timed run: any growth is compilation inside the timing."""
    count = 0
    for module in _loaded.values():
        for value in vars(module).values():
            caches = getattr(value, "device_caches", None)  # Triton's JITFunction: {device: (kernels, ...)}
            if isinstance(caches, dict):
                count += sum(len(entry[0]) for entry in caches.values())
    return count


def write_kv_cache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    ops = triton_kernels(key, k_cache)
    impl = ops["triton_cache"].write_kv_cache if ops else reference.write_kv_cache
    impl(key, value, k_cache, v_cache, slot_mapping)


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    ops = triton_kernels(q, k_cache)
    impl = ops["triton_decode"].paged_attention_decode if ops else reference.paged_attention_decode
    return impl(q, k_cache, v_cache, block_tables, context_lens, scale)


def paged_attention_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    ops = triton_kernels(q, k_cache)
    impl = ops["triton_prefill"].paged_attention_prefill if ops else reference.paged_attention_prefill
    return impl(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale)


def copy_blocks(src_cache: torch.Tensor, dst_cache: torch.Tensor, src_ids: torch.Tensor, dst_ids: torch.Tensor) -> None:
    """`dst_cache[dst_ids] = src_cache[src_ids]` across devices: one batched transfer per call."""
    ops = triton_kernels(src_cache, dst_cache)
    impl = ops["triton_cache"].copy_blocks if ops else reference.copy_blocks
    impl(src_cache, dst_cache, src_ids, dst_ids)


def attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    max_query_len: int,
    scale: float | None = None,
) -> torch.Tensor:
    """The one call a model layer makes: decode kernel when every query is one token."""
    if max_query_len == 1:
        return paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale)
    return paged_attention_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale)
