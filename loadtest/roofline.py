"""The roofline bound of an engine run: the least time the hardware could have taken for the
steps the scheduler actually issued.

Each step costs at least the larger of its FLOPs over the peak and its bytes (all weights once,
plus the KV every scheduled sequence reads) over the measured bandwidth. Summed over the steps
this is the time a perfect implementation of the same schedule would need; the engine's share of
it is how close the kernels and the Python around them come.
"""
from __future__ import annotations

from dataclasses import dataclass

from shunter.replica.models.config import ModelConfig


@dataclass(frozen=True)
class ChunkShape:
    start: int  # tokens already in the cache
    num_new: int  # tokens computed this step
    samples: bool  # whether the step ends with a logit row for it


def attended_keys(c: ChunkShape) -> int:
    """(query, key) pairs of a chunk: the query at position p attends p + 1 keys."""
    return c.num_new * c.start + c.num_new * (c.num_new + 1) // 2


@dataclass(frozen=True)
class ModelCost:
    layer_params: int  # weights of all decoder layers' matmuls
    head_params: int  # lm_head
    weight_bytes: int  # what a step must read at least once (embedding rows aside)
    attn_flops_per_key: int  # per query token and per key it attends (QK and PV, all layers)
    kv_bytes_per_token: int  # K and V of one cached token, all layers

    @classmethod
    def of(cls, config: ModelConfig, dtype_bytes: int) -> "ModelCost":
        h, i, d = config.hidden_size, config.intermediate_size, config.head_dim
        attn = h * d * (config.num_heads * 2 + config.num_kv_heads * 2)
        layer = config.num_layers * (attn + 3 * h * i)
        head = h * config.vocab_size
        return cls(
            layer_params=layer,
            head_params=head,
            weight_bytes=(layer + head) * dtype_bytes,
            attn_flops_per_key=4 * config.num_heads * d * config.num_layers,
            kv_bytes_per_token=2 * config.num_kv_heads * d * config.num_layers * dtype_bytes,
        )

    def step_flops(self, chunks: list[ChunkShape]) -> int:
        return self.flops(
            sum(c.num_new for c in chunks), sum(c.samples for c in chunks), sum(attended_keys(c) for c in chunks)
        )

    def flops(self, tokens: int, rows: int, keys: int) -> int:
        """A step of `tokens` computed tokens, `rows` logit rows, `keys` (query, key) pairs attended."""
        return 2 * self.layer_params * tokens + 2 * self.head_params * rows + self.attn_flops_per_key * keys

    def step_bytes(self, chunks: list[ChunkShape]) -> int:
        return self.bytes(sum(c.start + c.num_new for c in chunks))

    def bytes(self, kv_tokens: int) -> int:
        """All weights once, plus the KV of `kv_tokens` cached tokens the step's queries read."""
        return self.weight_bytes + self.kv_bytes_per_token * kv_tokens

    def step_seconds(self, chunks: list[ChunkShape], peak_flops: float, bandwidth: float) -> float:
        return max(self.step_flops(chunks) / peak_flops, self.step_bytes(chunks) / bandwidth)


def bound_seconds(cost: ModelCost, steps: list[list[ChunkShape]], peak_flops: float, bandwidth: float) -> float:
    return sum(cost.step_seconds(s, peak_flops, bandwidth) for s in steps if s)


def is_cuda(device: str) -> bool:
    """"cuda", "cuda:0" and torch.device("cuda", 1) alike."""
    import torch

    return torch.device(device).type == "cuda"


def measure_peak_flops(device: str, dtype) -> float:
    """FLOP/s of a large square matmul in the model's dtype: the achievable peak."""
    import time

    import torch

    n = 8192 if is_cuda(device) else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 20 if is_cuda(device) else 5
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def measure_bandwidth(device: str) -> float:
    """Bytes/s of a large copy, read plus written (1 GiB on a GPU, 256 MiB on the CPU)."""
    import time

    import torch

    size = (1 << 30) if is_cuda(device) else (1 << 28)
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    reps = 20 if is_cuda(device) else 5
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    sync(device)
    return 2 * size * reps / (time.perf_counter() - start)


def sync(device: str) -> None:
    """Wait for the device (timings of GPU work end here)."""
    import torch

    if is_cuda(device):
        torch.cuda.synchronize(device)


def release_memory(device: str) -> None:
    """Return what the last system left behind to the device before the next one sizes itself
    from free memory (HF continuous batching does)."""
    import gc

    import torch

    gc.collect()
    if is_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
