"""When the device works and when it waits for the host, step by step (CUDA only).

Two events a step, on the stream: one just before the step's inputs are copied up (its first
device work once the host has prepared it), one after its tokens are copied back. The time from
one step's end to the next one's start is time the device sat idle waiting for the host: zero
when the host launched the next step before the device finished this one (async scheduling),
the whole of the host's work when it did not. Read once, after the run (`summary`).
"""
from __future__ import annotations

import torch


class DeviceTimeline:
    def __init__(self) -> None:
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._begin: torch.cuda.Event | None = None

    def begin(self) -> None:
        self._begin = torch.cuda.Event(enable_timing=True)
        self._begin.record()

    def end(self) -> None:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        if self._begin is not None:
            self._events.append((self._begin, end))
        self._begin = None

    def summary(self) -> dict[str, float | int]:
        """Mean device busy and idle milliseconds per step, and idle's share of the step."""
        torch.cuda.synchronize()
        steps = len(self._events)
        if not steps:
            return {"device_steps": 0}
        busy = sum(b.elapsed_time(e) for b, e in self._events)
        idle = sum(max(prev_end.elapsed_time(b), 0.0) for (_, prev_end), (b, _) in zip(self._events, self._events[1:]))
        return {"device_steps": steps, "device_busy_ms": busy / steps, "device_idle_ms": idle / max(steps - 1, 1),
                "device_idle_share": idle / (idle + busy) if idle + busy else 0.0}
