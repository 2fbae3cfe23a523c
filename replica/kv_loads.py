"""Loads of prefix blocks from the CPU tier, beside the steps, with a timeout.

A request whose prefix goes on in the CPU tier (`replica/cpu_prefix_cache.py`) takes fresh
device blocks for that part and waits in its seat (`RequestStatus.LOADING`) while they are
copied in: on a GPU on a copy stream of its own (`ModelRunner.load`), so no step's forward pass
waits for the copies; on the CPU within the step that starts them (the simulator's runner prices
them as a GPU runs them: `loadtest/sim/runner.py`). Before
each schedule the engine polls its loads (`LoadWatch.poll`): the requests of a landed load run
from that step on; those of a load not landed `cpu_load_timeout_s` after its step launched it
run anyway and compute the tokens themselves, as vLLM's KV connectors fall back to recompute on a
failed load. A given-up load's device blocks stay held until its copy lands, so nothing written
into them later races with it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from shunter.clock import Clock
from shunter.replica.kv_cache_manager import PendingLoad


class LoadTicket(Protocol):
    """One step's loads on their way (None where a runner copies within the step)."""

    def done(self) -> bool: ...

    def wait(self, timeout_s: float) -> bool:
        """Block until landed or `timeout_s` passed; whether it landed."""


@dataclass
class CudaLoad:
    """A step's loads on a copy stream, up to `event`."""

    event: object  # torch.cuda.Event

    def done(self) -> bool:
        return self.event.query()  # type: ignore[attr-defined]

    def wait(self, timeout_s: float) -> bool:
        until = time.perf_counter() + timeout_s
        while not self.done():  # an event cannot be waited on with a timeout: poll it
            if time.perf_counter() >= until:
                return False
            time.sleep(50e-6)
        return True


@dataclass
class _Load:
    pending: list[PendingLoad]  # one per request whose blocks the step loads
    ticket: LoadTicket | None
    launched_at: float
    timed_out: bool = False


class Scheduling(Protocol):
    running: list
    waiting: list
    swapped: list

    def load_landed(self, load: PendingLoad) -> None: ...

    def load_timed_out(self, load: PendingLoad) -> None: ...


@dataclass
class LoadWatch:
    """The engine's loads in flight, oldest first."""

    scheduler: Scheduling
    timeout_s: float
    clock: Clock
    loads: list[_Load] = field(default_factory=list)

    def launched(self, pending: list[PendingLoad], ticket: LoadTicket | None) -> None:
        self.loads.append(_Load(pending, ticket, self.clock.now()))

    def poll(self) -> None:
        """Seat the requests of landed loads in `running`, and those of loads past their timeout;
        with nothing else to run, wait a little for the oldest load first (no spinning)."""
        s = self.scheduler
        if not (s.running or s.waiting or s.swapped):
            pending = next((x for x in self.loads if x.ticket is not None and not x.timed_out), None)
            if pending is not None:
                left = pending.launched_at + self.timeout_s - self.clock.now()
                pending.ticket.wait(min(max(left, 0.0), 0.005))  # type: ignore[union-attr]
        now, still = self.clock.now(), []
        for load in self.loads:
            if load.ticket is None or load.ticket.done():
                for p in load.pending:
                    s.load_landed(p)
                continue
            if not load.timed_out and now - load.launched_at > self.timeout_s:
                load.timed_out = True
                for p in load.pending:
                    s.load_timed_out(p)
            still.append(load)  # given up on or not: its blocks stay held until it lands
        self.loads = still
