"""First come, first served: arrival order; the newest arrival is preempted first."""
from __future__ import annotations

from operator import attrgetter

from shunter.replica.policies.base import SchedulingPolicy
from shunter.replica.request import Request


_ARRIVAL = attrgetter("arrival_time", "request_id")


class FCFSPolicy(SchedulingPolicy):
    name = "fcfs"
    rank_picks_victims = True  # the lowest priority *is* the newest arrival

    def rank(self, request: Request) -> tuple:
        return (request.arrival_time, request.request_id)

    def order(self, requests: list[Request]) -> list[Request]:
        return sorted(requests, key=_ARRIVAL)  # `rank`'s key, read in C: this runs every step
