"""Where asynchronous device-to-host copies end, for CPU code that reads what they wrote.

A swap-out copies KV blocks into the pinned CPU pool without blocking, so the call returns
before the bytes have landed. The CPU reads that pool later (a swap-in gathers its blocks into
staging on the CPU), and nothing orders that read after the copy except, by accident, some
unrelated synchronizing call in between. The fence makes the order explicit: `record()` after
issuing the copies, `wait()` before any CPU read of their destination.
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch


class Event(Protocol):
    def record(self) -> None: ...  # on the current stream

    def synchronize(self) -> None: ...


class HostFence:
    """One pending event at a time: later copies are issued on the same stream, so the last
    recorded event covers every copy before it."""

    def __init__(self, device: torch.device, new_event: Callable[[], Event] | None = None) -> None:
        # On the CPU copies are synchronous: nothing to wait for.
        self._new_event = new_event or (torch.cuda.Event if device.type == "cuda" else None)
        self._pending: Event | None = None

    def record(self) -> None:
        """Mark the end of the copies issued so far on the current stream."""
        if self._new_event is None:
            return
        event = self._new_event()
        event.record()
        self._pending = event

    def wait(self) -> None:
        """Block the CPU until every copy before the last `record()` has landed."""
        if self._pending is not None:
            self._pending.synchronize()
            self._pending = None
