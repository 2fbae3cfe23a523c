"""The seam between scheduling mechanism and scheduling policy.

A policy decides order (who gets the step's token budget first) and victims (who gives up
blocks when memory runs out). It sees only request state and a Clock: no torch, no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from shunter.clock import Clock
from shunter.replica.request import Request


@dataclass
class PolicyContext:
    """What a policy may read about the replica besides the requests themselves."""

    kv_usage: float = 0.0  # fraction of device blocks held by live requests
    mean_step_time: float = 0.0  # seconds, measured
    step: int = 0


class SchedulingPolicy:
    """Base policy: ordering by `rank` (lower runs first), victim = the worst-ranked candidate."""

    name: ClassVar[str] = "base"

    def __init__(self, clock: Clock, **settings: Any) -> None:
        if settings:
            raise ValueError(f"policy {self.name!r} takes no settings {sorted(settings)}")
        self.clock = clock

    def rank(self, request: Request) -> tuple:
        raise NotImplementedError

    def order(self, requests: list[Request]) -> list[Request]:
        return sorted(requests, key=self.rank)

    def pick_victim(self, candidates: list[Request]) -> Request:
        return max(candidates, key=self.rank)

    def should_preempt(self, waiting: Request, running: Request) -> bool:
        """Whether `waiting` may take the place of `running` when no seat or block is left."""
        return False

    # Hooks with no effect by default; stateful policies (MLQ, SJF's estimator) use them.
    def on_scheduled(self, request: Request, num_tokens: int) -> None:
        pass

    def on_finished(self, request: Request) -> None:
        pass

    def on_step(self, context: PolicyContext) -> None:
        pass
