"""The model runner a simulated engine runs over: tokens from a cheap function, time from a cost model.

It has the interface `Engine` needs of `ModelRunner` (shapes, pools' sizes, generators, block
reads and writes for migration, the measured preemption prices and step-time staircase) and nothing else: every
scheduling decision is still the real engine's. `execute` prices the step with the cost model
and moves the replica's clock that far ahead, so the engine stamps the step's tokens, and its
step-time model learns the step's duration, exactly as on a real device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from shunter.loadtest.sim.costs import CostModel, StepShape
from shunter.loadtest.sim.events import ReplicaClock
from shunter.replica.preemption import PreemptionCosts
from shunter.replica.request import Request
from shunter.replica.scheduler import SchedulerOutput
from shunter.replica.step_staircase import StepStaircase

MIN_STEP_S = 1e-6  # a step always takes some time, so a replica never loops at one instant
# With nothing to run but requests waiting for loads, the engine waits this long at most for one
# (`replica/kv_loads.py`): a simulated empty step lasts until the next load lands, at most this.
MAX_LOAD_WAIT_S = 0.005

# The token a request makes when its computed tokens reach `end`: any pure function will do.
TokenFn = Callable[[Request, int], int]


class CheapTokens:
    """O(1) per token: a function of the last token and the position, in [11, vocab_size - 11).
    `decodes` makes a step of one-token decodes' tokens in one pass (most steps), without a
    call per request."""

    def __init__(self, vocab_size: int) -> None:
        self.span = vocab_size - 22

    def __call__(self, request: Request, end: int) -> int:
        last = request.output_token_ids[-1] if request.output_token_ids else request.prompt_token_ids[-1]
        return (last * 7919 + end * 104_729) % self.span + 11

    def decodes(self, requests: list[Request]) -> list[int]:
        """`self(r, r.num_computed_tokens + 1)` for each: the token after each one's last."""
        span = self.span
        return [((r.output_token_ids[-1] if r.output_token_ids else r.prompt_token_ids[-1]) * 7919
                 + (r.num_computed_tokens + 1) * 104_729) % span + 11 for r in requests]


@dataclass
class SimModelConfig:
    vocab_size: int
    eos_token_ids: list[int] = field(default_factory=list)
    max_position_embeddings: int = 4096


@dataclass(slots=True)
class SimLoad:
    """A step's loads from the CPU tier, or its copies to it, beside the step: they land after
    their copy time (`CostModel.kv_copy_seconds`) and lengthen no step."""

    clock: ReplicaClock
    lands_at: float

    def done(self) -> bool:
        return self.clock.now() >= self.lands_at

    def wait(self, timeout_s: float) -> bool:
        return self.done()


class StepTokens(list):
    """A step's tokens, and its loads and offloads (None: the step launched none)."""

    loads: SimLoad | None = None
    offloads: SimLoad | None = None


class SimRunner:
    tokenizer = None

    def __init__(self, cost: CostModel, clock: ReplicaClock, num_blocks: int, num_cpu_blocks: int, block_size: int,
                 token_fn: TokenFn | None = None) -> None:
        self.cost, self.clock = cost, clock
        self.token_fn = token_fn or CheapTokens(cost.vocab_size)
        self.config = SimModelConfig(cost.vocab_size, list(cost.eos_token_ids), cost.max_model_len)
        self.max_model_len = cost.max_model_len
        self.num_blocks, self.num_cpu_blocks, self.block_size = num_blocks, num_cpu_blocks, block_size
        self.generators: dict[str, None] = {}
        self.busy_s = 0.0  # virtual seconds spent in steps
        self.num_steps = 0
        self._loads: list[SimLoad] = []  # not landed yet
        self._offloads_land_at = 0.0  # when the last offload started lands: they run one after another

    def add_generator(self, request_id: str, seed: int) -> None:
        self.generators[request_id] = None

    def drop_generator(self, request_id: str) -> None:
        self.generators.pop(request_id, None)

    def remove_request(self, request_id: str) -> None:
        """Nothing is kept per request on a simulated device."""

    def measure_preemption_costs(self) -> PreemptionCosts:
        return self.cost.preemption_costs(self.block_size)

    def measure_step_staircase(self, max_tokens: int) -> StepStaircase:
        return self.cost.staircase(max_tokens)

    def _launch_loads(self, out: SchedulerOutput, tokens: StepTokens, seconds: float) -> float:
        """Start the step's loads; a step with nothing to compute lasts until the next load lands
        (at most `MAX_LOAD_WAIT_S`), as the engine waits for one. The step's duration."""
        now = self.clock.now()
        if out.blocks_to_load:
            copy_s = self.cost.kv_copy_seconds(len(out.blocks_to_load) * self.block_size)
            tokens.loads = SimLoad(self.clock, now + copy_s)
            self._loads.append(tokens.loads)
        self._loads = [x for x in self._loads if x.lands_at > now]
        if not out.scheduled and self._loads:
            seconds = max(seconds, min(min(x.lands_at for x in self._loads) - now, MAX_LOAD_WAIT_S))
        return seconds

    def read_blocks(self, block_ids: list[int]) -> list[int]:
        """Stands for the blocks' KV in a migration: what moves is priced by the cluster."""
        return list(block_ids)

    def write_blocks(self, block_ids: list[int], kv: list[int]) -> None:
        if len(kv) != len(block_ids):
            raise ValueError(f"{len(kv)} blocks of KV arrived for {len(block_ids)} blocks")

    def execute(self, out: SchedulerOutput) -> StepTokens:
        seconds = max(self.cost.step_seconds(StepShape.of(out, self.block_size)), MIN_STEP_S)
        tokens = StepTokens()
        if out.blocks_to_load or self._loads:
            seconds = self._launch_loads(out, tokens, seconds)
        if out.blocks_to_offload:  # on the offloader's thread, one after another, beside the steps
            start = max(self.clock.now(), self._offloads_land_at)
            self._offloads_land_at = start + self.cost.kv_copy_seconds(len(out.blocks_to_offload) * self.block_size)
            tokens.offloads = SimLoad(self.clock, self._offloads_land_at)
        self.clock.lead = seconds
        self.busy_s += seconds
        self.num_steps += 1
        token_fn = self.token_fn
        if out.decodes is not None:  # each samples the token after its one
            if isinstance(token_fn, CheapTokens):
                tokens.extend(token_fn.decodes(out.decodes))
            else:
                tokens.extend([token_fn(req, req.num_computed_tokens + 1) for req in out.decodes])
            return tokens
        for s in out.scheduled:
            end, req = s.start + s.num_new_tokens, s.request
            samples = end == req.num_prompt_tokens + len(req.output_token_ids)  # req.num_tokens, inlined: hot
            tokens.append(token_fn(req, end) if samples else None)
        return tokens
