"""RAD, the Resource-Aware Dynamic scheduler (Bari, Hegde, de Veciana, "Optimal Scheduling
Algorithms for LLM Inference: Theory and Practice", 2025), over this engine's chunked batching.

The paper proves RAD throughput-optimal from two principles; this is our rule built on them
(the paper's own pseudo-code was not at hand, so nothing here is taken from its text):

* **Optimal tiling.** A step's time is a staircase in its token count (`step_staircase.py`,
  measured at start-up), so each step's size is chosen on it: all the runnable work when it fits
  in the budget, else the budget or the boundary below it, whichever gives more tokens per
  second. The step is then filled to that size with the next prefill chunks: no partial tile
  while work waits. The budget (`max_num_batched_tokens`) must be at least 16 tokens, the finest
  tile the start-up timing resolves (`EngineConfig` and `shunter serve` refuse less). The timing
  covers only the budget, the only sizes a step can take, so a device tile larger than the budget
  cannot show: RAD then finds no boundary and sizes its steps by the budget alone.
* **Dynamic allocation.** When the step cannot hold everything, its tokens are split between
  the two queues by their state, not by a fixed decode-first rule: running decodes get a share
  proportional to their number among the requests that could use the step (running decodes,
  running prefills, and as many queued requests as there are free seats; at least one), and
  whatever the prefills leave unused. A decode backlog (seats full of decodes) thus gets decode tokens, a
  prefill backlog prefill tokens, and neither phase is shut out by the other. Decodes that wait
  a step go first the next one (least recently served first).

Priorities compose as in `priority`: a request's class (with aging across classes, sticky once
served) orders it within its phase; swapped requests come back before new ones of their class.
`tile_aligned=False` keeps the split but sizes steps without the staircase (the baseline of the
tiling measurement).
"""
from __future__ import annotations

from typing import Any

from shunter.clock import Clock
from shunter.replica.policies.base import SchedulingPolicy
from shunter.replica.request import Request, RequestStatus
from shunter.sampling_params import CLASS_LEVEL


class RADPolicy(SchedulingPolicy):
    name = "rad"
    rank_picks_victims = True  # lowest class, then newest arrival

    def __init__(self, clock: Clock, aging_s: float = 30.0, preemptive: bool = False, tile_aligned: bool = True,
                 **settings: Any) -> None:
        super().__init__(clock, **settings)
        if aging_s <= 0:
            raise ValueError(f"aging_s must be > 0, got {aging_s}")
        self.aging_s, self.preemptive, self.tile_aligned = aging_s, preemptive, tile_aligned
        self._budget: int | None = None
        self.last_split: tuple[int, int] = (0, 0)  # (decode tokens, step size) of the last plan

    @property
    def starvation_bound_s(self) -> float:
        return self.aging_s

    # ---- order -------------------------------------------------------------------------------
    def level(self, request: Request) -> float:
        base = request.policy_state.get("level", CLASS_LEVEL[request.params.priority])
        return max(base - int(self.waited(request) // self.aging_s), 0)

    def rank(self, request: Request) -> tuple:
        return (self.level(request), request.arrival_time, request.request_id)

    def queue_key(self, request: Request) -> tuple:
        """The base order (class, swapped first, arrival) with the class computed once: the
        whole queue is sorted by it every step."""
        return (self.level(request), request.status is not RequestStatus.SWAPPED, request.arrival_time,
                request.request_id)

    def should_preempt(self, waiting: Request, running: Request) -> bool:
        return self.preemptive and self.level(waiting) < self.level(running)

    def _decode_key(self, request: Request) -> tuple:
        last = request.last_service
        return (self.level(request), request.arrival_time if last is None else last, request.arrival_time,
                request.request_id)

    def plan(self, running: list[Request], swapped: list[Request], waiting: list[Request]) -> list[Request]:
        decodes: list[Request] = []
        prefills: list[Request] = []
        for r in running:
            (prefills if r.is_prefilling else decodes).append(r)
        decodes.sort(key=self._decode_key)
        prefills.sort(key=self.rank)
        queued = sorted(swapped + waiting, key=self.queue_key)
        first = self._size_step(decodes, prefills, queued, len(running))
        return decodes[:first] + prefills + queued + decodes[first:]

    # ---- step size and split -------------------------------------------------------------------
    def _size_step(self, decodes: list[Request], prefills: list[Request], queued: list[Request], num_running: int) -> int:
        """Set the step's budget; return how many decodes go ahead of the prefills."""
        ctx = self.context
        startable = queued[:max(ctx.max_num_seqs - num_running, 0)]
        prefill_tokens = sum(_left(r) for r in prefills) + sum(_left(r) for r in startable)
        num_decodes, num_prefills = len(decodes), len(prefills) + len(startable)
        demand, ceiling = num_decodes + prefill_tokens, ctx.max_num_batched_tokens
        staircase = ctx.staircase if self.tile_aligned else None
        size = staircase.best_step(demand, ceiling) if staircase is not None else min(demand, ceiling)
        size = max(size, 1)
        if demand <= size:
            first = num_decodes
        else:
            share = max(size * num_decodes // (num_decodes + num_prefills), 1) if num_decodes else 0
            first = min(num_decodes, max(size - prefill_tokens, share))
        self._budget = size
        self.last_split = (first, size)
        return first

    def token_budget(self) -> int | None:
        return self._budget

    def on_scheduled(self, request: Request, num_tokens: int) -> None:
        request.policy_state["level"] = self.level(request)  # keep what aging earned
        super().on_scheduled(request, num_tokens)


def _left(request: Request) -> int:
    return request.num_tokens - request.num_computed_tokens
