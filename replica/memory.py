"""How many KV blocks fit: on the device from free memory, on the CPU from `cpu_kv_gib` or `swap_space`.

On a GPU the pool is sized after a profiling run (as vLLM does): free memory right after the
weights load is not what the pool may take, because the largest step the scheduler may issue
(a prefill of `max_num_batched_tokens`, the LM head on `max_num_seqs` rows) needs activations,
and its first matmuls allocate cuBLAS workspace. One dummy step is run first; free memory is
read after it, and its activation peak is set aside as well. The peak is read as memory the
caching allocator *reserved*, not allocated: the device sees whole segments, and the gap
(rounding, fragmentation) made the first H100 run overshoot `gpu_memory_utilization` by 0.14 GiB
when the pool was sized from the allocated peak.
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch

from shunter.mathutil import cdiv
from shunter.replica.engine_config import EngineConfig


def available_host_memory() -> int:
    """Bytes the kernel says a new allocation can take (MemAvailable)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not found in /proc/meminfo")


class DeviceMemory(Protocol):
    """What the sizing reads from a device (`CudaMemory`; tests pass a fake)."""

    def free_and_total(self) -> tuple[int, int]: ...

    def reserved(self) -> int: ...

    def peak_reserved(self) -> int: ...

    def reset_peak(self) -> None: ...

    def release(self) -> None: ...  # wait for the device, return cached blocks to it


class CudaMemory:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def free_and_total(self) -> tuple[int, int]:
        return torch.cuda.mem_get_info(self.device)

    def reserved(self) -> int:
        return torch.cuda.memory_reserved(self.device)

    def peak_reserved(self) -> int:
        return torch.cuda.max_memory_reserved(self.device)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def release(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()


def activation_peak(memory: DeviceMemory, run_step: Callable[[], None]) -> int:
    """Bytes the allocator reserves for `run_step` at its peak beyond what it held before (the
    step's tensors are freed and their segments released by the time it returns, so they are back
    in the free memory read afterwards)."""
    memory.release()
    before = memory.reserved()
    memory.reset_peak()
    run_step()
    memory.release()
    return max(0, memory.peak_reserved() - before)


def num_device_blocks(
    config: EngineConfig, device: torch.device, block_bytes: int, max_model_len: int,
    memory: DeviceMemory | None = None, activation_bytes: int = 0,
) -> int:
    """`memory` and `activation_bytes` (from `activation_peak`) are read on a GPU only."""
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    if device.type == "cuda":
        free, total = (memory or CudaMemory(device)).free_and_total()
        budget = free - (1 - config.gpu_memory_utilization) * total - activation_bytes
    else:
        budget = available_host_memory() * config.kv_memory_fraction
    # More blocks than every seat filled to the context length would never be used.
    useful = config.max_num_seqs * cdiv(max_model_len, config.block_size)
    blocks = min(int(budget // block_bytes), useful)
    if blocks < cdiv(max_model_len, config.block_size) and blocks < 16:
        raise ValueError(f"num_kv_blocks: only {blocks} KV blocks fit in free memory; lower max_model_len or free memory")
    return blocks


def num_cpu_blocks(config: EngineConfig, block_bytes: int) -> int:
    """`cpu_kv_gib` sizes a pool for swap and the prefix cache's CPU tier; without it the swap
    pool is only allocated when preemption may swap."""
    if config.cpu_kv_gib is not None:
        return max(1, int(config.cpu_kv_gib * (1 << 30) // block_bytes))
    if config.preemption_mode == "recompute":
        return 0
    return int(config.swap_space * (1 << 30) // block_bytes)
