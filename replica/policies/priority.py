"""Priority classes (`interactive` before `batch`) with aging across classes.

Within a class, arrival order. A queued request climbs one class per `aging_s` seconds without
service, and keeps the class it reached once served (sticky), so a promoted batch job is not
immediately preempted again by the interactive jobs it now ties with: that would livelock it
under recompute. Higher classes preempt lower ones, also when the seats are what is full.
"""
from __future__ import annotations

from typing import Any

from shunter.clock import Clock
from shunter.replica.policies.base import SchedulingPolicy
from shunter.replica.request import Request
from shunter.sampling_params import CLASS_LEVEL


class PriorityPolicy(SchedulingPolicy):
    name = "priority"

    def __init__(self, clock: Clock, aging_s: float = 30.0, preemptive: bool = True, **settings: Any) -> None:
        """`aging_s` defaults to the batch class's TTFT target: a batch job that has waited as long
        as its own target is promoted. Much shorter and, under overload, everyone ages to the top
        class and the policy degenerates to FCFS."""
        super().__init__(clock, **settings)
        if aging_s <= 0:
            raise ValueError(f"aging_s must be > 0, got {aging_s}")
        self.aging_s = aging_s
        self.preemptive = preemptive

    @property
    def starvation_bound_s(self) -> float:
        return self.aging_s

    def level(self, request: Request) -> float:
        state = request.policy_state
        base = state.get("level", CLASS_LEVEL[request.params.priority])
        return max(base - int(self.waited(request) // self.aging_s), 0)

    def rank(self, request: Request) -> tuple:
        return (self.level(request), request.arrival_time, request.request_id)

    def should_preempt(self, waiting: Request, running: Request) -> bool:
        return self.preemptive and self.level(waiting) < self.level(running)

    def on_scheduled(self, request: Request, num_tokens: int) -> None:
        request.policy_state["level"] = self.level(request)  # keep what aging earned
        super().on_scheduled(request, num_tokens)
