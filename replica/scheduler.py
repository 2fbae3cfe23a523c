"""Iteration-level scheduling: each step decides how many tokens each request computes now.

Mechanism only: token budget, seats, blocks, preemption (recompute, swap, or per victim the
cheaper of the two), memory-aware admission, deadline expiry. The policy supplies the order in
which requests are offered budget (`plan`), who is preempted, whether a queued request may take a
running one's place, and optionally the step's size. One step:

1. end requests whose deadline can no longer be met;
2. if the best queued request lacks a seat or blocks and outranks a running one, preempt for it;
3. walk the policy's plan: running requests get their tokens (prefills chunked), preempting
   victims when blocks run out; swapped and waiting ones are admitted while seats, blocks and
   the admission watermark allow, strictly in plan order (the first that does not fit closes
   admission for the step, so a large request is not overtaken forever by small ones).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from shunter.clock import Clock
from shunter.mathutil import cdiv
from shunter.replica.kv_cache_manager import KVCacheManager, PendingLoad, PrefixHit
from shunter.replica.policies import PolicyContext, SchedulingPolicy
from shunter.replica.policies.cache_order import CacheAwareOrder
from shunter.replica.policies.step_time import StepTimeModel
from shunter.replica.preemption import MODES, PreemptionCosts
from shunter.replica.request import Request, RequestStatus
from shunter.replica.step_staircase import StepStaircase

log = logging.getLogger(__name__)


@dataclass
class SchedulerConfig:
    max_num_batched_tokens: int = 512
    max_num_seqs: int = 64
    preemption_mode: str = "recompute"  # "recompute" | "swap" | "auto" (the cheaper, per victim)
    check_invariants: bool = False  # assert bookkeeping after every step (tests)
    # Admit a request only if the KV that running requests and it are predicted to take in all
    # (prompt + predicted output) stays under this fraction of the pool; None: admit on need now.
    admission_watermark: float | None = None
    # Within a class, waiting requests with more cached prefix blocks first (`policies/cache_order.py`).
    cache_aware_order: bool = False
    # A prefill's last chunk takes at most this many tokens (0: as many as fit). A P/D prefill
    # replica's last chunk is the KV that crosses the link after the first token, in the commit.
    last_chunk_tokens: int = 0

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.preemption_mode not in MODES:
            raise ValueError(f"preemption_mode must be one of {MODES}, got {self.preemption_mode!r}")
        if self.last_chunk_tokens < 0:
            raise ValueError(f"last_chunk_tokens must be >= 0, got {self.last_chunk_tokens}")
        if self.admission_watermark is not None and not 0 < self.admission_watermark <= 1:
            raise ValueError(f"admission_watermark must be in (0, 1] or None, got {self.admission_watermark}")


@dataclass(slots=True)
class ScheduledRequest:
    """The engine counts the tokens as computed when it launches the step (`Engine._launch`), and
    publishes the blocks they fill before the next `schedule()`."""

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
    # The CPU tier of the prefix cache (`replica/cpu_prefix_cache.py`): copies of published blocks
    # and loads of prefix hits found there, both beside the step on a GPU
    # (`replica/kv_offloads.py`, `replica/kv_loads.py`; on the CPU the runner makes them within
    # the step). `after_offloads`: the step hands on a device block that a copy started earlier
    # may not have read yet, so its writes must wait for the copies in flight.
    blocks_to_offload: list[tuple[int, int]] = field(default_factory=list)  # (device, cpu)
    after_offloads: bool = False
    blocks_to_load: list[tuple[int, int]] = field(default_factory=list)  # (cpu, device)
    loading: list[PendingLoad] = field(default_factory=list)  # of the requests admitted to wait for those loads
    preempted: list[Request] = field(default_factory=list)
    # Requests the scheduler ended before running them (e.g. a deadline that can no longer be
    # met), already removed from every queue; the engine reports them with their finish_reason.
    finished: list[Request] = field(default_factory=list)
    # Set by the engine when a request in the step follows a grammar: int32 [rows that sample,
    # ceil(vocab / 32)], a bit per allowed token (`replica/grammar.py`); the runner's sampler applies it.
    token_bitmask: Any = None
    # Set by the engine when requests verify speculative drafts: request id -> drafts in its chunk
    # (the chunk's last tokens); the runner returns the model's greedy token at each of them.
    speculated: dict[str, int] = field(default_factory=dict)
    # Set when every scheduled request is a running decode of one token (most steps): those
    # requests, in the step's order. The persistent batch then updates its rows by differences
    # (`InputBatch.update`).
    decodes: list[Request] | None = None

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
    num_priority_preemptions: int = 0  # of num_preemptions: to seat a higher-ranked queued request
    num_deadline_finished: int = 0


@dataclass
class _Step:
    """What one `schedule()` call has used so far."""

    budget: int
    chunk: int  # most tokens one prefill chunk may take
    preempted: set[str] = field(default_factory=set)  # left this step: not readmitted in it
    admitting: bool = True  # closed by the first queued request that does not fit
    reserved_blocks: int | None = None  # predicted future blocks of running requests (watermark)




class Scheduler:
    def __init__(
        self, config: SchedulerConfig, kv: KVCacheManager, policy: SchedulingPolicy, clock: Clock,
        costs: PreemptionCosts | None = None, staircase: StepStaircase | None = None,
    ) -> None:
        """`costs` are the measured prices of recompute and swap (defaults when not measured);
        `staircase` the measured step time by token count (None: not measured)."""
        self.config = config
        self.kv = kv
        self.policy = policy
        self.clock = clock
        self.costs = costs or PreemptionCosts(block_size=kv.block_size)
        self.step_model = StepTimeModel()
        self.staircase = staircase
        self.cache_order = CacheAwareOrder(kv.block_size) if config.cache_aware_order else None
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.swapped: list[Request] = []
        # Seated, waiting for their prefix to load from the CPU tier (`RequestStatus.LOADING`):
        # they hold seats and blocks, and join `running` when the load lands (`load_landed`).
        self.loading: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.deadlined: dict[str, Request] = {}  # the requests with a deadline_ms
        # Blocks the queued (waiting and swapped) requests' tokens take, kept as they come and go:
        # a queued request's tokens do not change, and the load report reads this every step.
        self.queued_blocks = 0
        self.stats = SchedulerStats()
        self.num_steps = 0

    # ---- queue changes -------------------------------------------------------------------
    def add(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        request.status = RequestStatus.WAITING
        self._track(request)
        self._enqueue(request, self.waiting)

    def finish(self, request: Request, reason: str) -> None:
        """End a request for good and give back everything it holds."""
        self.remove(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        self.policy.on_finished(request)

    def admit_migrated(self, request: Request, num_computed_tokens: int, reserved: bool = False) -> list[int] | None:
        """Seat a request arriving with its KV; the blocks to fill, or None if it must recompute.
        `reserved`: its blocks were held for it (live migration) and become its block table."""
        self._track(request)
        rid, needed = request.request_id, cdiv(num_computed_tokens, self.kv.block_size)
        if self.seats_taken < self.config.max_num_seqs:
            if reserved and self.kv.reserve(rid, needed, self.clock.now()):
                self.kv.adopt_reservation(request, needed)
            elif reserved or not self.kv.allocate(request, num_computed_tokens):
                self.kv.release_reservation(rid)
                return self._wait_migrated(request)
            request.num_computed_tokens = num_computed_tokens
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            return self.kv.blocks_of(rid)
        self.kv.release_reservation(rid)
        return self._wait_migrated(request)

    def _wait_migrated(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self._enqueue(request, self.waiting)
        return None

    def remove(self, request: Request) -> None:
        """Take a request out of every queue and free its blocks (finish, abort, migrate away)."""
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status is RequestStatus.LOADING:
            self.loading.remove(request)  # `kv.free` gives up on its load
        elif request.status is RequestStatus.WAITING:
            self._dequeue(request, self.waiting)
        elif request.status is RequestStatus.SWAPPED:
            self._dequeue(request, self.swapped)
            self.kv.free_swapped(request)
        self.kv.free(request)
        del self.requests[request.request_id]
        self.deadlined.pop(request.request_id, None)
        self.policy.on_removed(request)

    def _track(self, request: Request) -> None:
        self.requests[request.request_id] = request
        if request.params.deadline_ms is not None:
            self.deadlined[request.request_id] = request

    def _enqueue(self, request: Request, queue: list[Request]) -> None:
        queue.append(request)
        self.queued_blocks += cdiv(request.num_tokens, self.kv.block_size)

    def _dequeue(self, request: Request, queue: list[Request]) -> None:
        queue.remove(request)
        self.queued_blocks -= cdiv(request.num_tokens, self.kv.block_size)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    @property
    def seats_taken(self) -> int:
        return len(self.running) + len(self.loading)

    # ---- loads from the CPU tier -----------------------------------------------------------
    def load_landed(self, load: PendingLoad) -> None:
        """Its prefix is in its blocks: the request runs from this step on (one that left, or
        gave up on the load, meanwhile only gives back the blocks the copy wrote)."""
        request = load.request
        if self.kv.load_landed(load) and request.status is RequestStatus.LOADING:
            self._seated_after_load(request)

    def load_timed_out(self, load: PendingLoad) -> None:
        """The load took too long: the request runs from this step on and computes those tokens."""
        request = load.request
        if load.abandoned or request.status is not RequestStatus.LOADING:
            return
        lost = self.kv.abandon_load(request, timed_out=True)
        request.num_cached_tokens -= lost
        self.stats.num_recomputed_tokens += lost
        self._seated_after_load(request)

    def _seated_after_load(self, request: Request) -> None:
        self.loading.remove(request)
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    def observe_step(self, seconds: float, num_tokens: int) -> None:
        """The engine reports each step's duration; SLAI and deadlines read the fitted model."""
        self.step_model.observe(num_tokens, seconds)

    # ---- one step ------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(blocks_to_offload=self.kv.take_cpu_offloads())  # before any block is reused
        self.policy.on_step(self._context())
        self._expire_deadlines(out)
        step = _Step(budget=self.config.max_num_batched_tokens, chunk=self.config.max_num_batched_tokens)
        self._preempt_for_rank(step, out)
        # With every seat taken no queued request can start this step (a preemption in it closes
        # admission), so the policy is not asked to order a queue that may be deep.
        seats_left = self.seats_taken < self.config.max_num_seqs
        plan = self.policy.plan(list(self.running), list(self.swapped) if seats_left else [],
                                list(self.waiting) if seats_left else [])
        if self.cache_order is not None and seats_left:
            plan = self.cache_order.reorder(plan, self.policy, self.kv.cached_prefix_blocks)
        step.budget = min(self.policy.token_budget() or step.budget, step.budget)
        step.chunk = min(self.policy.prefill_chunk() or step.budget, step.budget)
        running, tables, block_size = RequestStatus.RUNNING, self.kv.block_tables, self.kv.block_size
        append_block = self.kv.append_block
        scheduled, preempted, on_scheduled = out.scheduled, step.preempted, self.policy.on_scheduled
        in_one_call = self.policy.decodes_in_one_call
        budget = step.budget  # the fast path's, in a local; the calls below read and write step.budget
        all_decodes = not preempted
        for req in plan:
            if budget == 0:
                break
            rid = req.request_id
            if preempted and rid in preempted:
                continue
            status = req.status
            if status is running:
                # Most of a step: a decode takes one token, and a block when it starts one and one
                # is free (what `_run` then `_schedule` do for it, without their calls).
                computed = req.num_computed_tokens
                if computed + 1 == req.num_prompt_tokens + len(req.output_token_ids):
                    table = tables.get(rid)
                    room = len(table) * block_size - computed if table is not None else -1
                    if room > 0 or (room == 0 and append_block(table)):
                        scheduled.append(ScheduledRequest(req, computed, 1, table))
                        budget -= 1
                        if req.first_scheduled_time is None:  # one that migrated in
                            req.first_scheduled_time = self.clock.now()
                        if not in_one_call:
                            on_scheduled(req, 1)
                        continue
                else:
                    all_decodes = False
            else:
                all_decodes = False
            step.budget = budget
            if status is running:
                self._run(req, step, out)
            elif step.admitting and status is RequestStatus.SWAPPED:
                self._swap_in(req, step, out)
            elif step.admitting and status is RequestStatus.WAITING:
                self._admit(req, step, out)
            budget = step.budget
        step.budget = budget
        if all_decodes and scheduled and not preempted:  # each plan entry up to the budget's end: a decode
            out.decodes = plan[: len(scheduled)]
        if in_one_call and scheduled:
            self.policy.on_step_scheduled(scheduled)
        out.blocks_to_load = self.kv.take_cpu_loads()
        if self.kv.offloads:
            out.after_offloads = self.kv.offload_reads_reused()
        self.num_steps += 1
        if self.config.check_invariants:
            self.check_invariants(out)
        return out

    def _num_new(self, req: Request, step: _Step, already: int = 0) -> int:
        """Tokens `req` computes now: all it lacks, a prefill capped at the chunk, within budget."""
        left = req.num_tokens - req.num_computed_tokens - already
        if left > 1:
            tail = self.config.last_chunk_tokens
            left = min(left - tail if 0 < tail < left else left, step.chunk)
        return min(left, step.budget)

    def _run(self, req: Request, step: _Step, out: SchedulerOutput) -> None:
        """Get blocks for a running request, preempting policy-chosen victims until they fit."""
        num_new = self._num_new(req, step)
        while not self.kv.allocate(req, num_new):
            busy = {s.request.request_id for s in out.scheduled}  # hold blocks claimed this step: never victims
            candidates = [r for r in self.running if r.request_id not in busy]
            victim = self.policy.pick_victim(candidates)
            self._preempt(victim, step, out)
            step.admitting = False  # memory is short: no one new this step
            if victim is req:
                return
        self._schedule(req, num_new, step, out)

    def _schedule(self, req: Request, num_new: int, step: _Step, out: SchedulerOutput) -> None:
        out.scheduled.append(ScheduledRequest(req, req.num_computed_tokens, num_new, self.kv.blocks_of(req.request_id)))
        step.budget -= num_new
        if req.first_scheduled_time is None:
            req.first_scheduled_time = self.clock.now()
        self.policy.on_scheduled(req, num_new)

    def _swap_in(self, req: Request, step: _Step, out: SchedulerOutput) -> None:
        """Swapped requests come back ahead of new ones of equal level (the policy's queue_key)."""
        num_new = self._num_new(req, step)
        cpu_blocks = len(self.kv.cpu_tables[req.request_id])
        grow = max(cdiv(req.num_computed_tokens + num_new, self.kv.block_size) - cpu_blocks, 0)
        if (
            self.seats_taken >= self.config.max_num_seqs
            or cpu_blocks + grow > self.kv.num_free_blocks
            or not self._under_watermark(req, step)
        ):
            step.admitting = False
            return
        out.blocks_to_swap_in.extend(self.kv.swap_in(req))
        self.stats.num_swaps_in += 1
        self._dequeue(req, self.swapped)
        self._seat(req, step)
        if not self.kv.allocate(req, num_new):  # cannot fail: checked against num_free_blocks above
            raise RuntimeError(f"swap-in of {req.request_id}: blocks checked free were not")
        self._schedule(req, num_new, step, out)

    def _admit(self, req: Request, step: _Step, out: SchedulerOutput) -> None:
        if self.seats_taken >= self.config.max_num_seqs or not self._under_watermark(req, step):
            step.admitting = False
            return
        hit = self.kv.find_prefix(req) if req.num_computed_tokens == 0 else PrefixHit([], 0)
        # With blocks to load it computes nothing until they land: it takes only theirs now.
        num_new = 0 if hit.cpu_block_ids else self._num_new(req, step, already=hit.num_tokens)
        if not self.kv.allocate(req, num_new, hit):
            step.admitting = False
            return
        if req.num_cached_tokens < 0:
            req.num_cached_tokens = hit.num_tokens
            self.kv.record_prefix_lookup(req.num_prompt_tokens, hit.num_tokens)
        self._dequeue(req, self.waiting)
        if req in self.kv.loads:  # part of its prefix comes from the CPU tier: it waits for that
            self._seat(req, step, loading=True)
            out.loading.append(self.kv.loads[req])
            return
        self._seat(req, step)
        self._schedule(req, num_new, step, out)

    def _seat(self, req: Request, step: _Step, loading: bool = False) -> None:
        (self.loading if loading else self.running).append(req)
        req.status = RequestStatus.LOADING if loading else RequestStatus.RUNNING
        if step.reserved_blocks is not None:
            step.reserved_blocks += self._future_blocks(req)

    # ---- admission watermark ---------------------------------------------------------------
    def _footprint_blocks(self, req: Request) -> int:
        """Blocks the request is predicted to hold at its end: prompt + predicted output."""
        out_tokens = max(self.policy.predicted_output(req), req.num_output_tokens + 1)
        return cdiv(req.num_prompt_tokens + out_tokens, self.kv.block_size)

    def _future_blocks(self, req: Request) -> int:
        return max(self._footprint_blocks(req) - len(self.kv.blocks_of(req.request_id)), 0)

    def _under_watermark(self, req: Request, step: _Step) -> bool:
        """Predicted footprint of everything running plus `req` fits under the watermark.
        With nothing running, anything that fits at all is admitted (or it would never run)."""
        watermark = self.config.admission_watermark
        if watermark is None or not self.running:
            return True
        if step.reserved_blocks is None:
            step.reserved_blocks = sum(self._future_blocks(r) for r in self.running)
        used = self.kv.num_blocks_in_use() + step.reserved_blocks + self._footprint_blocks(req)
        return used <= watermark * self.kv.num_blocks

    # ---- preemption ------------------------------------------------------------------------
    def _preempt_for_rank(self, step: _Step, out: SchedulerOutput) -> None:
        """Let the best queued request displace lower-ranked running ones when the seats or the
        blocks are full, as far as the policy's `should_preempt` allows (none under FCFS)."""
        queued = self.swapped + self.waiting
        if not self.policy.preemptive or not queued or not self.running:
            return
        head = min(queued, key=self.policy.queue_key)
        need_seat = self.seats_taken >= self.config.max_num_seqs
        need_blocks = self._blocks_to_start(head, step.budget) - self.kv.num_free_blocks
        victims: list[Request] = []
        candidates = list(self.running)
        freed = 0
        while candidates and ((need_seat and not victims) or freed < need_blocks):
            victim = self.policy.pick_victim(candidates)
            if not self.policy.should_preempt(head, victim):
                return  # not enough lower-ranked work to make room: preempt nobody
            victims.append(victim)
            candidates.remove(victim)
            freed += len(self.kv.blocks_of(victim.request_id))
        if (need_seat and not victims) or freed < need_blocks:
            return
        for victim in victims:
            self._preempt(victim, step, out)
            self.stats.num_priority_preemptions += 1

    def _blocks_to_start(self, req: Request, budget: int) -> int:
        if req.status is RequestStatus.SWAPPED:
            return len(self.kv.cpu_tables[req.request_id]) + 1
        return cdiv(min(req.num_tokens, budget), self.kv.block_size)

    def _preempt(self, victim: Request, step: _Step, out: SchedulerOutput) -> None:
        self.running.remove(victim)
        victim.num_preemptions += 1
        self.stats.num_preemptions += 1
        out.preempted.append(victim)
        step.preempted.add(victim.request_id)
        how = self.costs.choose(victim, self.config.preemption_mode, self.kv.can_swap_out(victim))
        if how == "swap":
            out.blocks_to_swap_out.extend(self.kv.swap_out(victim))
            victim.status = RequestStatus.SWAPPED
            self._enqueue(victim, self.swapped)
            self.stats.num_swaps_out += 1
        else:
            self.kv.free(victim)
            self.stats.num_recomputed_tokens += victim.num_computed_tokens
            victim.num_computed_tokens = 0
            victim.status = RequestStatus.WAITING
            self._enqueue(victim, self.waiting)
        log.debug("preempted %s (%s)", victim.request_id, victim.status.value)

    # ---- deadlines -------------------------------------------------------------------------
    def _expire_deadlines(self, out: SchedulerOutput) -> None:
        """End requests whose deadline has passed or is closer than the steps they still need."""
        now = self.clock.now()
        step_s = self.step_model.mean_step_time
        for req in list(self.deadlined.values()):
            deadline = req.arrival_time + req.params.deadline_ms / 1000.0
            if now + self._min_steps_left(req) * step_s > deadline:
                self.finish(req, "deadline")
                out.finished.append(req)
                self.stats.num_deadline_finished += 1

    def _min_steps_left(self, req: Request) -> int:
        """A lower bound: the prefill still to do at full budget, then one step per token that
        must still come (all of them with `ignore_eos`, else at least one: EOS may come next)."""
        to_compute = max(req.num_tokens - req.num_computed_tokens, 1)  # ends with the next token
        tokens_left = req.params.max_tokens - req.num_output_tokens if req.params.ignore_eos else 1
        return cdiv(to_compute, self.config.max_num_batched_tokens) + max(tokens_left, 1) - 1

    def _context(self) -> PolicyContext:
        return PolicyContext(
            kv_usage=self.kv.num_blocks_in_use() / self.kv.num_blocks,
            mean_step_time=self.step_model.mean_step_time,
            step=self.num_steps,
            costs=self.costs,
            preemption_mode=self.config.preemption_mode,
            step_model=self.step_model,
            max_num_seqs=self.config.max_num_seqs,
            max_num_batched_tokens=self.config.max_num_batched_tokens,
            staircase=self.staircase,
            now=self.clock.now(),
        )

    # ---- checks ----------------------------------------------------------------------------
    def check_invariants(self, out: SchedulerOutput | None = None) -> None:
        live = set(self.requests)
        assert self.seats_taken <= self.config.max_num_seqs
        assert {r.request_id for r in self.waiting + self.running + self.swapped + self.loading} == live
        assert len(self.waiting) + len(self.running) + len(self.swapped) + len(self.loading) == len(live)
        assert self.queued_blocks == sum(cdiv(r.num_tokens, self.kv.block_size) for r in self.waiting + self.swapped)
        assert set(self.deadlined) == {rid for rid, r in self.requests.items() if r.params.deadline_ms is not None}
        for req in self.running:
            assert req.status is RequestStatus.RUNNING
            assert len(self.kv.blocks_of(req.request_id)) * self.kv.block_size >= req.num_computed_tokens
        for req in self.loading:
            assert req.status is RequestStatus.LOADING and req in self.kv.loads
        for req in self.swapped:
            assert req.status is RequestStatus.SWAPPED
            assert req.request_id in self.kv.cpu_tables and req.request_id not in self.kv.block_tables
        for req in self.waiting:
            assert req.status is RequestStatus.WAITING
            assert req.request_id not in self.kv.block_tables
        if out is not None:
            assert out.num_tokens <= self.config.max_num_batched_tokens
            assert len({s.request.request_id for s in out.scheduled}) == len(out.scheduled)
            for s in out.scheduled:
                assert s.request.status is RequestStatus.RUNNING
                assert s.num_new_tokens >= 1 and s.start + s.num_new_tokens <= s.request.num_tokens
                assert len(s.block_ids) * self.kv.block_size >= s.start + s.num_new_tokens
            for req in out.finished:
                assert req.is_finished and req.request_id not in live
        self.kv.check_invariants(live)
