"""Static (request-level) batching: the baseline continuous batching is measured against.

A batch of up to `batch_size` requests (default: the engine's `max_num_seqs`) is formed in
arrival order when no batch is running; nobody else is admitted until its last member has
finished, so short members idle their seats while the longest one runs, as in a plain
`generate` loop. Preempted members stay members.
"""
from __future__ import annotations

from typing import Any

from shunter.clock import Clock
from shunter.replica.policies.base import SchedulingPolicy
from shunter.replica.request import Request


class StaticBatchPolicy(SchedulingPolicy):
    name = "static"
    rank_picks_victims = True

    def __init__(self, clock: Clock, batch_size: int | None = None, **settings: Any) -> None:
        super().__init__(clock, **settings)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.batch: set[str] = set()  # request ids of the batch being served

    def rank(self, request: Request) -> tuple:
        return (request.arrival_time, request.request_id)

    def plan(self, running: list[Request], swapped: list[Request], waiting: list[Request]) -> list[Request]:
        if not self.batch and not running:
            size = min(self.batch_size or self.context.max_num_seqs, self.context.max_num_seqs)
            self.batch = {r.request_id for r in self.order(waiting)[:size]}
        # Whatever runs keeps running (a migrated-in request may hold a seat outside the batch);
        # of the queue, only members are offered (and ordered: the queue may be deep).
        batch = self.batch
        return super().plan(running, [r for r in swapped if r.request_id in batch],
                            [r for r in waiting if r.request_id in batch])

    def on_removed(self, request: Request) -> None:  # finished, aborted or migrated away
        self.batch.discard(request.request_id)

    def on_finished(self, request: Request) -> None:
        self.batch.discard(request.request_id)
        super().on_finished(request)
