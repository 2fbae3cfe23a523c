"""First come, first served: arrival order; the newest arrival is preempted first."""
from __future__ import annotations

from shunter.replica.policies.base import SchedulingPolicy
from shunter.replica.request import Request


class FCFSPolicy(SchedulingPolicy):
    name = "fcfs"

    def rank(self, request: Request) -> tuple:
        return (request.arrival_time, request.request_id)

    def victim_key(self, request: Request) -> tuple:
        """In FCFS the lowest priority *is* the newest arrival; cost only breaks exact ties."""
        return (self.rank(request), -self.resume_cost(request))
