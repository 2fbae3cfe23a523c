"""SLAI: SLO-aware scheduling (Bari, Hegde, de Veciana, "Optimal Scheduling Algorithms for LLM
Inference: Theory and Practice", 2025), over this engine's chunked, continuous batching.

Each running decode has a latest start time LST = (time its last token was made) + (its TBT
target) - Θ x (measured mean step time): started later, its next token would miss the target.
Θ is `theta`, or `theta_high` once KV usage passes `memory_threshold` (when preemptions loom,
start earlier). Each step offers budget in this order: decodes whose LST has passed (earliest
first), prefills already under way, queued requests, then the remaining decodes. Queued
requests go class by class (a request waiting `starvation_s` counts as interactive): within a
class, swapped ones first (earliest LST), then new prefills shortest prompt first. The class
comes first because it is what `should_preempt` enforces: a batch request resumed ahead of a
queued interactive one would be preempted for it at the next step, and swapped back in after,
again and again (a swap each way per step, and the interactive request still waiting). The
step's token budget is the
most tokens the measured step-time model says fit in the tightest decode slack, clipped to
[min_budget, max_budget]; the prefill chunk is what that budget leaves after one token per
running decode: more prefill when slack is large, less when a decode is about to miss its TBT.
The paper states the algorithm, not numeric defaults for Θ and the bounds we could cite, so
the defaults here are ours: Θ = 1 (one step of margin), 2 above 90 % KV usage.
"""
from __future__ import annotations

from typing import Any

from shunter.clock import Clock
from shunter.replica.policies.base import SchedulingPolicy
from shunter.replica.policies.slos import parse_slo_defaults, slo_of
from shunter.replica.request import Request, RequestStatus
from shunter.sampling_params import CLASS_LEVEL


class SLAIPolicy(SchedulingPolicy):
    name = "slo"
    preemptive = True  # a higher class always may take a lower one's place

    def __init__(
        self,
        clock: Clock,
        theta: float = 1.0,
        theta_high: float = 2.0,
        memory_threshold: float = 0.9,
        min_budget: int = 16,
        max_budget: int | None = None,
        min_chunk: int = 16,
        starvation_s: float = 30.0,
        slo_defaults: dict | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(clock, **settings)
        if theta < 0 or theta_high < theta:
            raise ValueError(f"need 0 <= theta <= theta_high, got {theta}, {theta_high}")
        if not 0 < memory_threshold <= 1:
            raise ValueError(f"memory_threshold must be in (0, 1], got {memory_threshold}")
        if min_budget < 1 or min_chunk < 1 or (max_budget is not None and max_budget < min_budget):
            raise ValueError("need 1 <= min_budget <= max_budget and min_chunk >= 1")
        if starvation_s <= 0:
            raise ValueError(f"starvation_s must be > 0, got {starvation_s}")
        self.theta, self.theta_high, self.memory_threshold = theta, theta_high, memory_threshold
        self.min_budget, self.max_budget, self.min_chunk = min_budget, max_budget, min_chunk
        self.starvation_s = starvation_s
        self.slos = parse_slo_defaults(slo_defaults)
        self._budget: int | None = None
        self._chunk: int | None = None

    @property
    def starvation_bound_s(self) -> float:
        return self.starvation_s

    # ---- time targets ------------------------------------------------------------------------
    def current_theta(self) -> float:
        return self.theta_high if self.context.kv_usage >= self.memory_threshold else self.theta

    def next_token_due(self, request: Request) -> float:
        """When the next token must be out: last token + TBT (or arrival + TTFT before the first)."""
        slo = slo_of(request, self.slos)
        if request.last_token_time is None:
            return request.arrival_time + slo.ttft_ms / 1000.0
        return request.last_token_time + slo.tbt_ms / 1000.0

    def latest_start(self, request: Request) -> float:
        return self.next_token_due(request) - self.current_theta() * self.context.mean_step_time

    def starved(self, request: Request) -> bool:
        state = request.policy_state
        if not state.get("starved") and self.waited(request) >= self.starvation_s:
            state["starved"] = True
        return bool(state.get("starved"))

    # ---- order -------------------------------------------------------------------------------
    def level(self, request: Request) -> float:
        return 0.0 if self.starved(request) else float(CLASS_LEVEL[request.params.priority])

    def rank(self, request: Request) -> tuple:
        """For new prefills: starved first, then class (the tighter TTFT), then shortest prompt."""
        left = request.num_tokens - request.num_computed_tokens
        return (not self.starved(request), self.level(request), left, request.arrival_time, request.request_id)

    def should_preempt(self, waiting: Request, running: Request) -> bool:
        return self.level(waiting) < self.level(running)

    def plan(self, running: list[Request], swapped: list[Request], waiting: list[Request]) -> list[Request]:
        now = self.clock.now()
        decodes = sorted((r for r in running if not r.is_prefilling), key=self.latest_start)
        urgent = [r for r in decodes if self.latest_start(r) <= now]
        relaxed = decodes[len(urgent):]
        ongoing = sorted((r for r in running if r.is_prefilling), key=lambda r: (r.arrival_time, r.request_id))
        queued = sorted(swapped + waiting, key=self._queue_key)
        self._size_step(now, decodes)
        return urgent + ongoing + queued + relaxed

    def _queue_key(self, request: Request) -> tuple:
        """Class first (see the module docstring), then swapped before new, each in its own order."""
        if request.status is RequestStatus.SWAPPED:
            return (self.level(request), 0, self.latest_start(request))
        return (self.level(request), 1, self.rank(request))

    # ---- step size ---------------------------------------------------------------------------
    def _size_step(self, now: float, decodes: list[Request]) -> None:
        ceiling = self.max_budget or self.context.max_num_batched_tokens
        # Never fewer tokens than running decodes: when a decode is already late (no slack), a
        # smaller step cannot save it, and a step that skips decodes makes them late too, which
        # keeps the budget at the floor: a spiral in which decodes take turns and nobody's
        # prefill runs until the starvation bound.
        floor = min(max(self.min_budget, len(decodes)), ceiling)
        if not decodes:
            self._budget, self._chunk = ceiling, ceiling
            return
        slack = min(self.next_token_due(r) for r in decodes) - now
        fits = self.context.step_model.max_tokens_within(slack)
        self._budget = ceiling if fits is None else min(max(fits, floor), ceiling)
        self._chunk = max(self._budget - len(decodes), self.min_chunk)

    def token_budget(self) -> int | None:
        return self._budget

    def prefill_chunk(self) -> int | None:
        return self._chunk
