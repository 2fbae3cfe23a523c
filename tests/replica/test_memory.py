"""KV pool sizing on a GPU sets aside the largest step's activations, measured by a profiling run
(arithmetic checked with a fake device memory; the dummy step itself runs on the CPU)."""
from __future__ import annotations

import torch

from shunter.replica.engine_config import EngineConfig
from shunter.replica.memory import activation_peak, num_device_blocks
from shunter.replica.models.loader import load_model
from shunter.replica.profile_run import run_dummy_step

GiB, MiB = 1 << 30, 1 << 20


class FakeMemory:
    """Tracks what the caching allocator holds from the device (reserved), which is what free
    memory reflects."""

    def __init__(self, free: int, total: int, reserved: int) -> None:
        self.free, self.total, self.now = free, total, reserved
        self.peak = reserved
        self.log: list[str] = []

    def free_and_total(self) -> tuple[int, int]:
        return self.free, self.total

    def reserved(self) -> int:
        return self.now

    def peak_reserved(self) -> int:
        return self.peak

    def reset_peak(self) -> None:
        self.peak = self.now
        self.log.append("reset")

    def release(self) -> None:
        self.log.append("release")

    def step(self, nbytes: int) -> None:
        """A step whose allocations make the allocator reserve `nbytes` at its peak (tensors plus
        segment rounding and fragmentation), all released before it returns."""
        self.peak = max(self.peak, self.now + nbytes)
        self.log.append("step")


def test_activation_peak_is_what_the_step_adds_to_what_is_reserved():
    memory = FakeMemory(free=10 * GiB, total=16 * GiB, reserved=2 * GiB)
    memory.peak = 7 * GiB  # an earlier peak (weights loading) must not count
    assert activation_peak(memory, lambda: memory.step(3 * GiB)) == 3 * GiB
    assert memory.log == ["release", "reset", "step", "release"]


def test_pool_takes_free_memory_less_headroom_less_the_largest_step():
    config = EngineConfig(max_num_seqs=1000, gpu_memory_utilization=0.9)
    memory = FakeMemory(free=10 * GiB, total=16 * GiB, reserved=2 * GiB)
    blocks = num_device_blocks(config, torch.device("cuda"), 1 * MiB, 4096, memory, activation_bytes=3 * GiB)
    assert blocks == int((10 - 1.6 - 3) * 1024)  # (free - 10% of total - activations) / block


def test_dummy_step_runs_without_a_kv_pool():
    """The largest prefill and more sampled rows than tokens, at toy size on the CPU."""
    loaded = load_model("random:tiny", device="cpu")
    run_dummy_step(loaded.model, loaded.config, block_size=16, num_tokens=40, num_rows=70,
                   dtype=torch.float32, device=torch.device("cpu"))
