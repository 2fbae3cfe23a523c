"""Swap-ins read the CPU pool only after the swap-outs before them have landed (an event recorded
after the asynchronous device-to-host copies, waited on before the CPU reads the pool)."""
from __future__ import annotations

import torch

from shunter import LLM
from shunter.kernels import ops as kernels
from shunter.replica.host_fence import HostFence


class FakeEvent:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def record(self) -> None:
        self.log.append("record")

    def synchronize(self) -> None:
        self.log.append("wait")


def test_swap_in_waits_for_the_swap_outs_before_it(monkeypatch):
    runner = LLM(model="random:tiny", device="cpu", num_kv_blocks=8, preemption_mode="swap",
                 swap_space=0.001).engine.runner
    log: list[str] = []
    runner.swap_out_fence = HostFence(torch.device("cpu"), new_event=lambda: FakeEvent(log))
    copy = kernels.copy_blocks
    monkeypatch.setattr(kernels, "copy_blocks", lambda *a: log.append("copy") or copy(*a))
    per_swap = ["copy"] * 2 * len(runner.kv_caches)  # K and V of every layer
    runner.swap([(0, 1), (2, 3)], to_cpu=True)
    assert log == per_swap + ["record"]
    log.clear()
    runner.swap([(1, 5)], to_cpu=False)
    assert log == ["wait"] + per_swap
    log.clear()
    runner.swap([(3, 6)], to_cpu=False)  # nothing swapped out since the last wait
    assert log == per_swap


def test_fence_is_a_no_op_on_the_cpu():
    fence = HostFence(torch.device("cpu"))
    fence.record()
    fence.wait()  # copies to the CPU are synchronous there: nothing pending, nothing raised
