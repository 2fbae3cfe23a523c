"""Scheduling policies: plain classes over request state and a Clock, chosen by name."""
from __future__ import annotations

from typing import Any

from shunter.clock import Clock
from shunter.replica.policies.base import PolicyContext, SchedulingPolicy
from shunter.replica.policies.fcfs import FCFSPolicy
from shunter.replica.policies.mlq import MLQPolicy
from shunter.replica.policies.priority import PriorityPolicy
from shunter.replica.policies.rad import RADPolicy
from shunter.replica.policies.sjf import SJFPolicy
from shunter.replica.policies.slo import SLAIPolicy
from shunter.replica.policies.static import StaticBatchPolicy

POLICIES: dict[str, type[SchedulingPolicy]] = {
    cls.name: cls for cls in (FCFSPolicy, SJFPolicy, MLQPolicy, PriorityPolicy, SLAIPolicy, StaticBatchPolicy, RADPolicy)
}

__all__ = ["POLICIES", "PolicyContext", "SchedulingPolicy", "make_policy"]


def make_policy(name: str, clock: Clock, **settings: Any) -> SchedulingPolicy:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {name!r}") from None
    return cls(clock, **settings)
