"""Multi-level feedback queue: short work first without knowing lengths in advance.

A request starts at a level set by its prompt length (one level per threshold it exceeds), so
the prompt is paid for by where it starts (FastServe's skip-join). At level k it may then make
`quantum * 2**k` output tokens before it is demoted a level; recomputing tokens it had already
computed (after a preemption) is not new work, so a preempted job is not demoted by its own
recovery. Nothing starves: a request that waited `aging_s`
without service climbs a level per `aging_s` (kept once served), and one that used up
`max_demotions` quanta (counting those spent at the bottom level) goes back to the top. A lower level preempts a higher one.
"""
from __future__ import annotations

from typing import Any, Sequence

from shunter.clock import Clock
from shunter.replica.policies.base import SchedulingPolicy
from shunter.replica.request import Request


class MLQPolicy(SchedulingPolicy):
    name = "mlq"

    def __init__(
        self,
        clock: Clock,
        num_levels: int = 4,
        quantum: int = 32,
        level_prompt_tokens: Sequence[int] = (128, 512, 2048),
        aging_s: float = 30.0,
        max_demotions: int = 6,
        preemptive: bool = True,
        **settings: Any,
    ) -> None:
        super().__init__(clock, **settings)
        if num_levels < 1 or quantum < 1 or aging_s <= 0 or max_demotions < 1:
            raise ValueError("mlq: num_levels, quantum, max_demotions must be >= 1 and aging_s > 0")
        self.num_levels, self.quantum = num_levels, quantum
        self.level_prompt_tokens = sorted(level_prompt_tokens)
        self.aging_s, self.max_demotions, self.preemptive = aging_s, max_demotions, preemptive

    def start_level(self, request: Request) -> int:
        exceeded = sum(1 for t in self.level_prompt_tokens if request.num_prompt_tokens > t)
        return min(exceeded, self.num_levels - 1)

    @property
    def starvation_bound_s(self) -> float:
        return self.aging_s

    def level(self, request: Request) -> float:
        stored = request.policy_state.get("level")
        base = self.start_level(request) if stored is None else stored
        return max(base - int(self.waited(request) // self.aging_s), 0)

    def rank(self, request: Request) -> tuple:
        return (self.level(request), request.arrival_time, request.request_id)

    def should_preempt(self, waiting: Request, running: Request) -> bool:
        return self.preemptive and self.level(waiting) < self.level(running)

    def on_scheduled(self, request: Request, num_tokens: int) -> None:
        state = request.policy_state
        level = int(self.level(request))  # aging is kept once served
        end = request.num_computed_tokens + num_tokens
        high_water = state.get("high_water", request.num_prompt_tokens)  # output positions only
        served = state.get("served", 0) + max(end - high_water, 0)
        state["high_water"] = max(high_water, end)
        if served >= self.quantum << level:  # quantum used up: down a level (or stay at the bottom)
            level, served = min(level + 1, self.num_levels - 1), 0
            state["demotions"] = state.get("demotions", 0) + 1
            if state["demotions"] >= self.max_demotions:
                level, state["demotions"] = 0, 0
        state["level"], state["served"] = level, served
        super().on_scheduled(request, num_tokens)
