"""The seam between scheduling mechanism and scheduling policy.

A policy decides order (who gets the step's token budget first), admission (which queued
request is next), victims (who gives up blocks or a seat), and optionally the step's size
(SLAI). It sees only request state, a Clock and a `PolicyContext` snapshot: no torch, no Ray,
so the same object runs in the engine and in tests under a FakeClock.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from shunter.clock import Clock
from shunter.replica.policies.estimator import OutputLengthEstimator
from shunter.replica.policies.step_time import StepTimeModel
from shunter.replica.preemption import PreemptionCosts
from shunter.replica.request import Request, RequestStatus
from shunter.replica.step_staircase import StepStaircase

if TYPE_CHECKING:
    from shunter.replica.scheduler import ScheduledRequest

DEFAULT_STARVATION_S = 30.0  # the batch class's TTFT target (see SchedulingPolicy)


@dataclass
class PolicyContext:
    """What a policy may read about the replica besides the requests themselves."""

    kv_usage: float = 0.0  # fraction of device blocks held by live requests
    mean_step_time: float = 0.0  # seconds, measured
    step: int = 0
    costs: PreemptionCosts = field(default_factory=PreemptionCosts)
    preemption_mode: str = "recompute"
    step_model: StepTimeModel = field(default_factory=StepTimeModel)
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    staircase: StepStaircase | None = None  # step time by token count, measured at start-up (None: not)
    now: float | None = None  # the clock when the step began (None: outside a step; read the clock)


class SchedulingPolicy:
    """Base policy. `level` is the coarse priority class (lower is more important), `rank` the
    full order (lower runs first). Subclasses define `rank` and, where classes exist, `level`.

    Starvation bounds (aging, max wait) default to 30 s, the batch class's TTFT target: a bound,
    not the typical wait. Under overload, queueing delays exceed a short bound for everyone,
    everyone is promoted, and the policy silently degenerates into FCFS."""

    name: ClassVar[str] = "base"
    # Victims: True when the rank alone says who goes first (cost only breaks ties); False
    # when, within a class, the cheapest to resume goes first.
    rank_picks_victims: ClassVar[bool] = False
    # Whether `should_preempt` can ever say yes; when not, the scheduler does not look for the
    # queue's best request every step (an O(queue) scan wasted under a deep queue).
    preemptive: bool = False
    # Whether the scheduler may tell a step's plain decodes in one `on_step_scheduled` call: True
    # unless a subclass extends `on_scheduled` (then each is told in place, as it is scheduled).
    decodes_in_one_call: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.decodes_in_one_call = cls.on_scheduled is SchedulingPolicy.on_scheduled

    def __init__(self, clock: Clock, estimator_quantile: float = 0.5, **settings: Any) -> None:
        if settings:
            raise ValueError(f"policy {self.name!r} takes no settings {sorted(settings)}")
        self.clock = clock
        self.estimator = OutputLengthEstimator(quantile=estimator_quantile)
        self.context = PolicyContext()

    # ---- order -----------------------------------------------------------------------------
    @property
    def starvation_bound_s(self) -> float:
        """Seconds of waiting after which a request is served by its age, not by what the
        policy prefers (aging, max wait): cache-aware ordering honours the same bound."""
        return DEFAULT_STARVATION_S

    def rank(self, request: Request) -> tuple:
        raise NotImplementedError

    def level(self, request: Request) -> float:
        return 0.0

    def order(self, requests: list[Request]) -> list[Request]:
        return sorted(requests, key=self.rank)

    def queue_key(self, request: Request) -> tuple:
        """Order among queued requests: swapped ones come back before new ones of equal level."""
        return (self.level(request), request.status is not RequestStatus.SWAPPED, self.rank(request))

    def plan(self, running: list[Request], swapped: list[Request], waiting: list[Request]) -> list[Request]:
        """Who is offered budget this step, in order. Decode-first (stall-free): running decodes,
        then running prefills (chunked into what is left), then queued requests."""
        ordered = self.order(running)
        # `r.is_prefilling`, inline (this runs every step over every running request); most steps
        # have no running prefill, and then the running order is the decodes' as it is.
        prefills = [r for r in ordered if r.num_prompt_tokens + len(r.output_token_ids) - r.num_computed_tokens > 1]
        if prefills:
            chosen = set(prefills)
            ordered = [r for r in ordered if r not in chosen] + prefills
        return ordered + sorted(swapped + waiting, key=self.queue_key)

    # ---- step size (SLAI adapts these; None means the engine's configured limits) ------------
    def token_budget(self) -> int | None:
        return None

    def prefill_chunk(self) -> int | None:
        return None

    # ---- victims ---------------------------------------------------------------------------
    def resume_cost(self, request: Request) -> float:
        return self.context.costs.resume_s(request, self.context.preemption_mode)

    def victim_key(self, request: Request) -> tuple:
        """Larger is preempted first: lowest class, then cheapest to resume and worst rank
        (in the order `rank_picks_victims` says)."""
        if self.rank_picks_victims:
            return (self.level(request), self.rank(request), -self.resume_cost(request))
        return (self.level(request), -self.resume_cost(request), self.rank(request))

    def pick_victim(self, candidates: list[Request]) -> Request:
        return max(candidates, key=self.victim_key)

    def should_preempt(self, waiting: Request, running: Request) -> bool:
        """Whether `waiting` may take the place of `running` when no seat or block is left."""
        return False

    # ---- what the policy knows about requests ----------------------------------------------
    def predicted_output(self, request: Request) -> int:
        return self.estimator.predict(request)

    def waited(self, request: Request) -> float:
        """Seconds since the request last got budget (since arrival if never)."""
        last = request.last_service
        return max(self.clock.now() - (request.arrival_time if last is None else last), 0.0)

    # ---- hooks: subclasses extend them and call super() --------------------------------------
    def on_scheduled(self, request: Request, num_tokens: int) -> None:
        now = self.context.now  # one clock read a step, not one per scheduled request
        request.last_service = self.clock.now() if now is None else now

    def on_step_scheduled(self, scheduled: list[ScheduledRequest]) -> None:
        """Every request of the step, in one call after its other decisions, for a policy whose
        `on_scheduled` is this class's (`decodes_in_one_call`; its plain decodes are not told one
        by one): it stamps the service time, which nothing later in the step reads (a request
        scheduled in a step is never its victim). Those told already get the same stamp again."""
        now = self.context.now
        if now is None:
            now = self.clock.now()
        for s in scheduled:
            s.request.last_service = now

    def on_finished(self, request: Request) -> None:
        self.estimator.observe(request)

    def on_removed(self, request: Request) -> None:
        """The request left this replica (finished, aborted or migrated away)."""

    def on_step(self, context: PolicyContext) -> None:
        self.context = context
