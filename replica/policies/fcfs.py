"""First come, first served: arrival order; the newest arrival is preempted first."""
from __future__ import annotations

from shunter.replica.policies.base import SchedulingPolicy
from shunter.replica.request import Request


class FCFSPolicy(SchedulingPolicy):
    name = "fcfs"
    rank_picks_victims = True  # the lowest priority *is* the newest arrival

    def rank(self, request: Request) -> tuple:
        return (request.arrival_time, request.request_id)
