"""A step's sampled tokens back to the host: one copy, one wait, the only sync of a step.

The copy goes into pinned memory without blocking, and an event marks its end; the engine waits
on it only when it needs the tokens, which under async scheduling is after the next step has
been launched. The pinned buffers alternate, so that step's copy never overwrites tokens not
read yet. `waits` counts the waits (the benchmarks' syncs per step; a test holds it to one).
Log-probabilities, when a row of the step asked, are copied back the same way before the one
event is recorded, so they add copies but no wait.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from shunter.logprobs import MAX_LOGPROBS
from shunter.replica.cpu_prefix_cache import CopyTicket
from shunter.replica.kv_loads import LoadTicket
from shunter.replica.logprobs import PromptLogprobs
from shunter.replica.sampler import LogprobsTensors


@dataclass
class PendingTokens:
    values: torch.Tensor  # int64 [N]: the sampled rows' tokens, on the host once `event` is reached
    event: torch.cuda.Event | None  # None: already there (the CPU)
    readback: Readback | None = None
    logprobs: LogprobsTensors | None = None  # of the sampled rows, on the host once `event` is reached
    prompt: PromptLogprobs | None = None  # likewise
    # Speculation: per request, per draft, (accepted, the token emitted instead where not).
    draft_verdicts: dict[str, list[tuple[bool, int]]] | None = None
    loads: LoadTicket | None = None  # the step's loads from the CPU tier, when they run beside it
    offloads: CopyTicket | None = None  # the step's copies to the CPU tier (`replica/kv_offloads.py`)

    def tokens(self) -> list[int]:
        """The token of each scheduled request that sampled, in order; waits."""
        if self.readback is not None:
            self.readback.waits += 1
        if self.event is not None:
            self.event.synchronize()
        return self.values.tolist()


class _PinnedLogprobs:
    """Pinned room for the log-probabilities of `rows` rows, made the first time a step asks."""

    def __init__(self, rows: int) -> None:
        self.parts = [torch.empty(rows, dtype=torch.float32, pin_memory=True),
                      torch.empty(rows, dtype=torch.int64, pin_memory=True),
                      torch.empty(rows * MAX_LOGPROBS, dtype=torch.int64, pin_memory=True),
                      torch.empty(rows * MAX_LOGPROBS, dtype=torch.float32, pin_memory=True)]

    def copy(self, values: LogprobsTensors) -> LogprobsTensors:
        views = [part[: t.numel()].view(t.shape) for part, t in zip(self.parts, values.tensors())]
        for view, t in zip(views, values.tensors()):
            view.copy_(t, non_blocking=True)
        return LogprobsTensors(*views)


class Readback:
    def __init__(self, max_rows: int, device: torch.device, max_tokens: int = 0) -> None:
        """`max_rows`: sampled rows a step; `max_tokens`: tokens a step (its prompt positions)."""
        self.cuda = device.type == "cuda"
        self._host = [torch.zeros(max_rows, dtype=torch.int64, pin_memory=True) for _ in range(2)] if self.cuda else []
        self.max_rows, self.max_tokens = max_rows, max(max_tokens, max_rows)
        self._logprobs: list[tuple[_PinnedLogprobs, _PinnedLogprobs]] = []  # per parity: sampled rows, prompt rows
        self._parity = 0
        self.waits = 0

    def start(self, tokens: torch.Tensor, logprobs: LogprobsTensors | None = None,
              prompt: PromptLogprobs | None = None) -> PendingTokens:
        """Begin copying `tokens` (int64 [N], on the device) back, with the step's log-probabilities."""
        if not self.cuda:
            return PendingTokens(tokens, None, self, logprobs, prompt)
        parity, self._parity = self._parity, self._parity ^ 1
        host = self._host[parity][: tokens.numel()]
        host.copy_(tokens, non_blocking=True)
        if logprobs is not None or prompt is not None:
            if not self._logprobs:
                self._logprobs = [(_PinnedLogprobs(self.max_rows), _PinnedLogprobs(self.max_tokens)) for _ in range(2)]
            rows, positions = self._logprobs[parity]
            logprobs = rows.copy(logprobs) if logprobs is not None else None
            prompt = PromptLogprobs(prompt.spans, positions.copy(prompt.values)) if prompt is not None else None
        event = torch.cuda.Event()
        event.record()
        return PendingTokens(host, event, self, logprobs, prompt)
