"""A step's sampled tokens back to the host: one copy, one wait, the only sync of a step.

The copy goes into pinned memory without blocking, and an event marks its end; the engine waits
on it only when it needs the tokens, which under async scheduling is after the next step has
been launched. The pinned buffers alternate, so that step's copy never overwrites tokens not
read yet. `waits` counts the waits (the benchmarks' syncs per step; a test holds it to one).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PendingTokens:
    values: torch.Tensor  # int64 [N] on the host once `event` is reached
    event: torch.cuda.Event | None  # None: already there (the CPU)
    samples: np.ndarray | None  # bool per scheduled request: whether it sampled (None: all did)
    readback: Readback | None = None

    def tokens(self) -> list[int | None]:
        """The sampled token of each scheduled request (None where none was sampled); waits."""
        if self.readback is not None:
            self.readback.waits += 1
        if self.event is not None:
            self.event.synchronize()
        got = self.values.tolist()
        if self.samples is None:
            return got
        it = iter(got)
        return [next(it) if s else None for s in self.samples.tolist()]


class Readback:
    def __init__(self, max_rows: int, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._host = [torch.zeros(max_rows, dtype=torch.int64, pin_memory=True) for _ in range(2)] if self.cuda else []
        self._parity = 0
        self.waits = 0

    def start(self, tokens: torch.Tensor, samples: np.ndarray | None) -> PendingTokens:
        """Begin copying `tokens` (int64 [N], on the device) back."""
        if not self.cuda:
            return PendingTokens(tokens, None, samples, self)
        host = self._host[self._parity][: tokens.numel()]
        self._parity ^= 1
        host.copy_(tokens, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return PendingTokens(host, event, samples, self)
