"""The discrete-event loop: callbacks in virtual-time order, and the clocks engines read.

Time moves only from one event to the next, so a run costs what its events cost, however long
the virtual time it covers. Events at the same instant run in the order they were scheduled.
"""
from __future__ import annotations

import gc
import heapq
import itertools
import math
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator


class EventLoop:
    """A virtual clock (`now()`: it is a `shunter.clock.Clock`) and the events still to come."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start
        self._heap: list[tuple[float, int, Callable[..., Any], tuple]] = []
        # Events given all at once (`at_each`: a workload's arrivals), in (time, seq) order beside
        # the heap: 100,000 arrivals on the heap made every pop sift through 17 levels.
        self._queue: deque[tuple[float, int, Callable[..., Any], tuple]] = deque()
        self._seq = itertools.count()
        self.num_events = 0

    def now(self) -> float:
        return self.t

    def at(self, t: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` at virtual time `t` (not before now: the past cannot be changed)."""
        if t < self.t:
            raise ValueError(f"event at {t} is before now ({self.t})")
        heapq.heappush(self._heap, (t, next(self._seq), fn, args))

    def at_each(self, events: list[tuple[float, Callable[..., Any], tuple]]) -> None:
        """`at(t, fn, *args)` for each `(t, fn, args)`, in the same order as that many calls would
        run them (time, then the order given), kept off the heap until their turn."""
        queued = []
        for t, fn, args in events:
            if t < self.t:
                raise ValueError(f"event at {t} is before now ({self.t})")
            queued.append((t, next(self._seq), fn, args))
        queued.sort(key=lambda e: e[0])  # stable: equal times keep their seq order
        merged = list(heapq.merge(self._queue, queued)) if self._queue else queued
        self._queue.clear()  # in place: a running loop holds it
        self._queue.extend(merged)

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` `delay` seconds from now (`at`, inlined: twice per replica step)."""
        if delay < 0:
            raise ValueError(f"event at {self.t + delay} is before now ({self.t})")
        heapq.heappush(self._heap, (self.t + delay, next(self._seq), fn, args))

    def runs_next_now(self) -> bool:
        """Whether an event scheduled now for now would run next: nothing else is due at this
        instant. The caller, at the end of an event, may then make that call itself, counted
        as an event, with the same result (a replica's next step: half the loop's events)."""
        t, heap, queue = self.t, self._heap, self._queue
        return (not heap or heap[0][0] > t) and (not queue or queue[0][0] > t)

    def run(self, until: float = math.inf) -> None:
        """Run events in time order until none is left or the next is after `until`.

        Python's cyclic garbage collector is paused meanwhile: the loop allocates millions of
        short-lived objects, which trigger collections that rescan every long-lived one (the
        block pools of a 1,000-replica cluster are millions), and it makes almost no cycles
        (a 2,000-request run of the shared-prefix experiment left ~300 cyclic objects, freed
        once the collector is back). That was ~30% of a 1,000-replica run's time."""
        heap, queue, pop = self._heap, self._queue, heapq.heappop
        with collector_paused():
            while True:
                # (time, seq) decides between the two, as if every event were on the heap
                if queue and (not heap or queue[0] < heap[0]):
                    if queue[0][0] > until:
                        break
                    t, _, fn, args = queue.popleft()
                elif heap and heap[0][0] <= until:
                    t, _, fn, args = pop(heap)
                else:
                    break
                self.t = t
                self.num_events += 1
                fn(*args)

    @property
    def pending(self) -> int:
        """Events still to come. (Not `__len__`: an empty loop must stay truthy where code
        writes `clock or MonotonicClock()`.)"""
        return len(self._heap) + len(self._queue)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off inside, as it was after (a caller that turned it
    off keeps it off). The simulator's loop and its cluster's construction (4 million block
    objects at 1,000 replicas, each young collection then rescanning the survivors) make
    almost no cycles."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class ReplicaClock:
    """What one replica's engine reads as the time: the loop's, plus `lead` while a step runs.

    An engine step is computed at once when it starts, but its tokens are made when it ends: the
    runner sets `lead` to the step's duration, so the engine stamps them at start + duration;
    the replica clears it when the loop reaches that moment."""

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self.lead = 0.0

    def now(self) -> float:
        return self.loop.t + self.lead
