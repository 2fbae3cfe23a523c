"""Write-through copies of published KV blocks to the CPU tier, beside the steps.

The prefix cache's CPU tier (`replica/cpu_prefix_cache.py`) keeps a copy of each block the
device publishes. On a GPU making those copies is not the step's work: a worker thread makes
them, in the order they were started, while the engine thread goes on launching steps (as
vLLM's offloading connector stores blocks without the step waiting). It gathers the blocks on a
copy stream of its own, after what the engine's stream had queued when they were started (the
KV they read is written by then), into pinned memory, and scatters them into the CPU pool on the
host. The engine learns that they landed from the ticket (`KVCacheManager.land_offloads`), and
only then do they join the tier. On the CPU the runner copies within the step instead
(`ModelRunner.offload`): both pools are host memory, and a thread copying beside the step's
matmuls slows them on the same cores about as much as the copy itself takes.

Two rules keep the bytes right: a step's copies read device blocks its own schedule cannot hand
on (the KV manager holds them until the copies have started), and a later step that hands one
on runs its writes after the copies in flight (`Offloader.wait`; the scheduler says when, with
`SchedulerOutput.after_offloads`). That is rare: a block is copied the step after it fills. A
CUDA graph's capture waits for them too (`DecodeGraphs.before_capture`): no other thread may
make a call a capture forbids meanwhile.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

Pairs = list[tuple[int, int]]  # (device block, CPU block)


@dataclass
class OffloadTicket:
    """One step's copies on the worker (`replica/cpu_prefix_cache.py`'s `CopyTicket`)."""

    future: Future

    def done(self) -> bool:
        if not self.future.done():
            return False
        self.future.result()  # a copy that failed raises here, on the engine's thread
        return True


class Offloader:
    """One worker thread that makes the copies, in order."""

    def __init__(self, copy: Callable[[Pairs], None], device: torch.device) -> None:
        self._copy = copy  # gathers, moves and scatters the pairs' blocks; they have landed when it returns
        self._device = device
        self._stream: torch.cuda.Stream | None = None  # a GPU's copy stream, made at the first copy
        self._worker: ThreadPoolExecutor | None = None
        self._in_flight: deque[Future] = deque()

    def start(self, pairs: Pairs) -> OffloadTicket:
        """Queue the copies; returns at once."""
        written = None
        if self._device.type == "cuda":
            if self._stream is None:
                self._stream = torch.cuda.Stream(self._device)
            written = torch.cuda.Event()
            written.record()  # on the engine's stream: the KV the copies read is written up to here
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="kv-offload")
        while self._in_flight and self._in_flight[0].done():
            self._in_flight.popleft()
        future = self._worker.submit(self._run, list(pairs), written)
        self._in_flight.append(future)
        return OffloadTicket(future)

    @torch.inference_mode()
    def _run(self, pairs: Pairs, written: torch.cuda.Event | None) -> None:
        if self._stream is None:
            self._copy(pairs)
            return
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(written)
            self._copy(pairs)
            self._stream.synchronize()

    def wait(self) -> None:
        """Block until every copy started has landed: before writing a block one may still read."""
        while self._in_flight:
            self._in_flight.popleft().result()
