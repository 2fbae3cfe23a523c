"""Shortest job first: least predicted remaining work runs first, with a starvation bound.

Remaining work = prompt tokens still to compute + output tokens still expected (the request's
hint, else the online estimator). Pure SJF starves a long job under a stream of short ones, so
a request that has waited `max_wait_s` without service is marked starved for good and goes ahead
of every unstarved one; once marked it is also the last to be chosen as a victim.
"""
from __future__ import annotations

from typing import Any

from shunter.clock import Clock
from shunter.replica.policies.base import SchedulingPolicy
from shunter.replica.request import Request


class SJFPolicy(SchedulingPolicy):
    name = "sjf"
    rank_picks_victims = True  # the lowest priority is the longest remaining job (starved ones last)

    def __init__(self, clock: Clock, max_wait_s: float = 30.0, preemptive: bool = False, **settings: Any) -> None:
        super().__init__(clock, **settings)
        if max_wait_s <= 0:
            raise ValueError(f"max_wait_s must be > 0, got {max_wait_s}")
        self.max_wait_s = max_wait_s
        self.preemptive = preemptive  # SRPT: a shorter queued job may take a running one's seat

    def remaining_work(self, request: Request) -> int:
        prompt_left = max(request.num_prompt_tokens - request.num_computed_tokens, 0)
        return prompt_left + self.estimator.remaining(request)

    def starved(self, request: Request) -> bool:
        state = request.policy_state
        if not state.get("starved") and self.waited(request) >= self.max_wait_s:
            state["starved"] = True
        return bool(state.get("starved"))

    @property
    def starvation_bound_s(self) -> float:
        return self.max_wait_s

    def level(self, request: Request) -> float:
        return 0.0 if self.starved(request) else 1.0

    def rank(self, request: Request) -> tuple:
        return (self.level(request), self.remaining_work(request), request.arrival_time, request.request_id)

    def should_preempt(self, waiting: Request, running: Request) -> bool:
        if not self.preemptive:
            return False
        return self.rank(waiting) < self.rank(running) and self.level(waiting) <= self.level(running)
