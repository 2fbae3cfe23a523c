"""How many KV blocks fit: on the device from free memory, on the CPU from `swap_space`."""
from __future__ import annotations

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


def num_device_blocks(config: EngineConfig, device: torch.device, block_bytes: int, max_model_len: int) -> int:
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = free - (1 - config.gpu_memory_utilization) * total
    else:
        budget = available_host_memory() * config.kv_memory_fraction
    # More blocks than every seat filled to the context length would never be used.
    useful = config.max_num_seqs * cdiv(max_model_len, config.block_size)
    blocks = min(int(budget // block_bytes), useful)
    if blocks < cdiv(max_model_len, config.block_size) and blocks < 16:
        raise ValueError(f"num_kv_blocks: only {blocks} KV blocks fit in free memory; lower max_model_len or free memory")
    return blocks


def num_cpu_blocks(config: EngineConfig, block_bytes: int) -> int:
    """The swap pool is only allocated when preemption may swap."""
    if config.preemption_mode == "recompute":
        return 0
    return int(config.swap_space * (1 << 30) // block_bytes)
