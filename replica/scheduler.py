"""Iteration-level scheduling: each step decides how many tokens each request computes now.

Mechanism only (token budget, seats, blocks, preemption, swap); the order of requests and the
choice of victims come from the `SchedulingPolicy`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from shunter.clock import Clock
from shunter.replica.kv_cache_manager import KVCacheManager, PrefixHit
from shunter.replica.policies import PolicyContext, SchedulingPolicy
from shunter.replica.request import Request, RequestStatus

log = logging.getLogger(__name__)


@dataclass
class SchedulerConfig:
    max_num_batched_tokens: int = 512
    max_num_seqs: int = 64
    preemption_mode: str = "recompute"  # "recompute" | "swap"
    check_invariants: bool = False  # assert bookkeeping after every step (tests)

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.preemption_mode not in ("recompute", "swap"):
            raise ValueError(f"preemption_mode must be 'recompute' or 'swap', got {self.preemption_mode!r}")


@dataclass
class ScheduledRequest:
    request: Request
    start: int  # first token position computed this step (= num_computed_tokens when scheduled)
    num_new_tokens: int
    block_ids: list[int]

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the request's tokens, so a new token is sampled."""
        return self.start + self.num_new_tokens == self.request.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    blocks_to_swap_out: list[tuple[int, int]] = field(default_factory=list)  # (device, cpu)
    blocks_to_swap_in: list[tuple[int, int]] = field(default_factory=list)  # (cpu, device)
    preempted: list[Request] = field(default_factory=list)
    # Requests the scheduler ended before running them (e.g. a deadline that can no longer be
    # met), already removed from every queue; the engine reports them with their finish_reason.
    finished: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled and not self.blocks_to_swap_out and not self.finished


@dataclass
class SchedulerStats:
    num_preemptions: int = 0
    num_swaps_out: int = 0
    num_swaps_in: int = 0
    num_recomputed_tokens: int = 0


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, policy: SchedulingPolicy, clock: Clock) -> None:
        self.config = config
        self.kv = kv
        self.policy = policy
        self.clock = clock
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.swapped: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.stats = SchedulerStats()
        self.num_steps = 0

    # ---- queue changes -------------------------------------------------------------------
    def add(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish(self, request: Request, reason: str) -> None:
        """End a request for good and give back everything it holds."""
        self.remove(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        self.policy.on_finished(request)

    def admit_migrated(self, request: Request, num_computed_tokens: int) -> list[int] | None:
        """Seat a request arriving with its KV; the blocks to fill, or None if it must recompute."""
        self.requests[request.request_id] = request
        if len(self.running) < self.config.max_num_seqs and self.kv.allocate(request, num_computed_tokens):
            request.num_computed_tokens = num_computed_tokens
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            return self.kv.blocks_of(request.request_id)
        request.status = RequestStatus.WAITING
        self.waiting.append(request)
        return None

    def remove(self, request: Request) -> None:
        """Take a request out of every queue and free its blocks (finish, abort, migrate away)."""
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status is RequestStatus.WAITING:
            self.waiting.remove(request)
        elif request.status is RequestStatus.SWAPPED:
            self.swapped.remove(request)
            self.kv.free_swapped(request)
        self.kv.free(request)
        del self.requests[request.request_id]

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # ---- one step ------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        busy: set[str] = set()  # requests holding blocks claimed this step: never victims
        self.policy.on_step(self._context())

        for req in self.policy.order(self.running):
            if budget == 0:
                break
            if req.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = min(req.num_tokens - req.num_computed_tokens, budget)
            if self._allocate_or_preempt(req, num_new, busy, out):
                budget -= self._schedule(req, num_new, busy, out)

        if not out.preempted:
            budget = self._resume_swapped(budget, busy, out)
            self._admit_waiting(budget, busy, out)

        self.num_steps += 1
        if self.config.check_invariants:
            self.check_invariants(out)
        return out

    def _allocate_or_preempt(self, req: Request, num_new: int, busy: set[str], out: SchedulerOutput) -> bool:
        """Get blocks for a running request, preempting policy-chosen victims until they fit."""
        while not self.kv.allocate(req, num_new):
            candidates = [r for r in self.running if r.request_id not in busy]
            victim = self.policy.pick_victim(candidates)
            self._preempt(victim, out)
            if victim is req:
                return False
        return True

    def _schedule(self, req: Request, num_new: int, busy: set[str], out: SchedulerOutput) -> int:
        out.scheduled.append(ScheduledRequest(req, req.num_computed_tokens, num_new, self.kv.blocks_of(req.request_id)))
        busy.add(req.request_id)
        if req.first_scheduled_time is None:
            req.first_scheduled_time = self.clock.now()
        self.policy.on_scheduled(req, num_new)
        return num_new

    def _resume_swapped(self, budget: int, busy: set[str], out: SchedulerOutput) -> int:
        """Swapped requests come back before new ones: they already hold progress."""
        for req in self.policy.order(self.swapped):
            if budget == 0 or len(self.running) >= self.config.max_num_seqs:
                break
            num_new = min(req.num_tokens - req.num_computed_tokens, budget)
            cpu_blocks = len(self.kv.cpu_tables[req.request_id])
            grow = -(-(req.num_computed_tokens + num_new) // self.kv.block_size) - cpu_blocks
            if cpu_blocks + max(grow, 0) > self.kv.num_free_blocks:
                break
            out.blocks_to_swap_in.extend(self.kv.swap_in(req))
            self.stats.num_swaps_in += 1
            self.swapped.remove(req)
            self.running.append(req)
            req.status = RequestStatus.RUNNING
            assert self.kv.allocate(req, num_new)
            budget -= self._schedule(req, num_new, busy, out)
        return budget

    def _admit_waiting(self, budget: int, busy: set[str], out: SchedulerOutput) -> None:
        for req in self.policy.order(self.waiting):
            if budget == 0 or len(self.running) >= self.config.max_num_seqs:
                break
            hit = self.kv.find_prefix(req) if req.num_computed_tokens == 0 else PrefixHit([], 0)
            num_new = min(req.num_tokens - req.num_computed_tokens - hit.num_tokens, budget)
            if not self.kv.allocate(req, num_new, hit):
                break
            if req.num_cached_tokens < 0:
                req.num_cached_tokens = hit.num_tokens
                self.kv.record_prefix_lookup(req.num_prompt_tokens, hit.num_tokens)
            self.waiting.remove(req)
            self.running.append(req)
            req.status = RequestStatus.RUNNING
            budget -= self._schedule(req, num_new, busy, out)

    def _preempt(self, victim: Request, out: SchedulerOutput) -> None:
        self.running.remove(victim)
        victim.num_preemptions += 1
        self.stats.num_preemptions += 1
        out.preempted.append(victim)
        if self.config.preemption_mode == "swap" and self.kv.can_swap_out(victim):
            out.blocks_to_swap_out.extend(self.kv.swap_out(victim))
            victim.status = RequestStatus.SWAPPED
            self.swapped.append(victim)
            self.stats.num_swaps_out += 1
        else:
            self.kv.free(victim)
            self.stats.num_recomputed_tokens += victim.num_computed_tokens
            victim.num_computed_tokens = 0
            victim.status = RequestStatus.WAITING
            self.waiting.append(victim)
        log.debug("preempted %s (%s)", victim.request_id, victim.status.value)

    def _context(self) -> PolicyContext:
        usage = self.kv.num_blocks_in_use() / self.kv.num_blocks
        return PolicyContext(kv_usage=usage, step=self.num_steps)

    # ---- after the model ran ---------------------------------------------------------------
    def advance(self, scheduled: ScheduledRequest) -> None:
        """Count the step's tokens as computed and publish blocks that became full."""
        req = scheduled.request
        req.num_computed_tokens += scheduled.num_new_tokens
        self.kv.cache_computed_blocks(req)

    def check_invariants(self, out: SchedulerOutput | None = None) -> None:
        live = set(self.requests)
        assert len(self.running) <= self.config.max_num_seqs
        assert {r.request_id for r in self.waiting + self.running + self.swapped} == live
        for req in self.running:
            assert req.status is RequestStatus.RUNNING
            assert len(self.kv.blocks_of(req.request_id)) * self.kv.block_size >= req.num_computed_tokens
        for req in self.swapped:
            assert req.request_id in self.kv.cpu_tables and req.request_id not in self.kv.block_tables
        for req in self.waiting:
            assert req.request_id not in self.kv.block_tables
        if out is not None:
            assert out.num_tokens <= self.config.max_num_batched_tokens
            assert len({s.request.request_id for s in out.scheduled}) == len(out.scheduled)
            for s in out.scheduled:
                assert s.num_new_tokens >= 1 and s.start + s.num_new_tokens <= s.request.num_tokens
                assert len(s.block_ids) * self.kv.block_size >= s.start + s.num_new_tokens
        self.kv.check_invariants(live)
