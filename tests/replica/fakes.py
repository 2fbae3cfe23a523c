"""A scripted model runner: the real Engine, Scheduler and KV cache manager run over it.

It keeps a fake KV cache that records which token sits in each slot and checks, every step,
that each scheduled request's context is really in its blocks. A token is a pure function of
the tokens before it, so any scheduling must produce the same output: the same oracle as the
real model's greedy decoding, at the cost of nothing.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from shunter.clock import FakeClock
from shunter.outputs import RequestOutput
from shunter.replica.engine import Engine
from shunter.replica.engine_config import EngineConfig
from shunter.replica.output_collector import OutputCollector
from shunter.replica.request import PLACEHOLDER
from shunter.replica.scheduler import SchedulerOutput
from shunter.replica.step_staircase import StepStaircase
from shunter.testing.fake_engine import EOS, next_token, reference_output  # noqa: F401 (one fake model)


@dataclass
class FakeModelConfig:
    vocab_size: int = 1000
    eos_token_ids: list[int] = field(default_factory=lambda: [EOS])
    max_position_embeddings: int = 4096


class FakeLoad:
    """A step's loads from the CPU tier that land `delay_s` after launch on the fake clock: the
    copy is made then, so a block handed to another request meanwhile would show in its KV check."""

    def __init__(self, runner: FakeRunner, pairs: list[tuple[int, int]], lands_at: float) -> None:
        self.runner, self.pairs, self.lands_at, self.landed = runner, list(pairs), lands_at, False
        self.slots = [list(runner.cpu_slots[c]) for c, _ in pairs]  # what the CPU blocks hold at launch

    def done(self) -> bool:
        if not self.landed and self.runner.clock.now() >= self.lands_at:
            self.landed = True
            for (_, dev), slots in zip(self.pairs, self.slots):
                self.runner.device_slots[dev] = list(slots)
        return self.landed

    def wait(self, timeout_s: float) -> bool:
        return self.done()


class FakeOffload:
    """A step's copies to the CPU tier that land `delay_s` after launch on the fake clock and read
    the device blocks only then, as late as a copy beside the steps may: a block handed on and
    written meanwhile without waiting for the copy would put the wrong KV in the CPU tier, which
    the KV check catches in the request that loads it."""

    def __init__(self, runner: FakeRunner, pairs: list[tuple[int, int]], lands_at: float) -> None:
        self.runner, self.pairs, self.lands_at, self.landed = runner, list(pairs), lands_at, False

    def land(self) -> None:
        if not self.landed:
            self.landed = True
            for dev, cpu in self.pairs:
                self.runner.cpu_slots[cpu] = list(self.runner.device_slots[dev])

    def done(self) -> bool:
        if self.runner.clock.now() >= self.lands_at:
            self.land()
        return self.landed


class FakePending(list):
    """A step's tokens, and its loads and offloads when they land later (`FakeRunner.load_delay_s`,
    `offload_delay_s`)."""

    loads: FakeLoad | None = None
    offloads: FakeOffload | None = None


class FakeRunner:
    """Synchronous, but it speaks async scheduling: a placeholder input token is the token it
    sampled for that request in the step before, as the real runner takes it from the device."""

    tokenizer = None
    supports_async_scheduling = True

    def __init__(
        self, num_blocks: int, block_size: int = 16, num_cpu_blocks: int = 0, max_model_len: int = 4096,
        clock: FakeClock | None = None, step_time: float = 0.01,
    ) -> None:
        self.config = FakeModelConfig(max_position_embeddings=max_model_len)
        self.num_blocks, self.num_cpu_blocks, self.block_size = num_blocks, num_cpu_blocks, block_size
        self.max_model_len = max_model_len
        self.clock, self.step_time = clock, step_time
        self.device_slots: dict[int, list[int | None]] = {b: [None] * block_size for b in range(num_blocks)}
        self.cpu_slots: dict[int, list[int | None]] = {b: [None] * block_size for b in range(num_cpu_blocks)}
        self.generators: dict = {}
        self.steps: list[SchedulerOutput] = []
        self.sampled: dict[str, int] = {}  # the last token each request sampled
        self.removed: list[str] = []  # remove_request calls, in order
        self.staircase: StepStaircase | None = None  # what `measure_step_staircase` "finds"
        # Loads from the CPU tier: None copies them within the step; else they land this long after.
        self.load_delay_s: float | None = None
        # Copies to the CPU tier likewise; `after_offloads` lands those in flight before the step.
        self.offload_delay_s: float | None = None
        self.offloads: list[FakeOffload] = []

    def measure_step_staircase(self, max_tokens: int) -> StepStaircase | None:
        """The scripted staircase as a timing up to `max_tokens` would find it."""
        if self.staircase is None:
            return None
        timed = [(n, t) for n, t in zip(self.staircase.sizes, self.staircase.seconds) if n <= max_tokens]
        return StepStaircase.from_timings([n for n, _ in timed], [t for _, t in timed])

    def add_generator(self, request_id: str, seed: int) -> None:
        self.generators[request_id] = None

    def drop_generator(self, request_id: str) -> None:
        self.generators.pop(request_id, None)

    def remove_request(self, request_id: str) -> None:
        self.removed.append(request_id)

    def read_blocks(self, block_ids: list[int]) -> list[list[int | None]]:
        return [list(self.device_slots[b]) for b in block_ids]

    def write_blocks(self, block_ids: list[int], kv: list[list[int | None]]) -> None:
        for b, slots in zip(block_ids, kv):
            self.device_slots[b] = list(slots)

    def execute(self, out: SchedulerOutput) -> FakePending:
        self.steps.append(out)
        if out.after_offloads:
            for offload in self.offloads:
                offload.land()
        self.offloads = [o for o in self.offloads if not o.landed]
        offloads = out.blocks_to_offload if self.offload_delay_s is None else []
        for dev, cpu in out.blocks_to_swap_out + offloads:
            self.cpu_slots[cpu] = list(self.device_slots[dev])
        for cpu, dev in out.blocks_to_swap_in:
            self.device_slots[dev] = list(self.cpu_slots[cpu])
        tokens = FakePending()
        if out.blocks_to_offload and self.offload_delay_s is not None:
            tokens.offloads = FakeOffload(self, out.blocks_to_offload, self.clock.now() + self.offload_delay_s)
            self.offloads.append(tokens.offloads)
        if out.blocks_to_load and self.load_delay_s is None:
            for cpu, dev in out.blocks_to_load:
                self.device_slots[dev] = list(self.cpu_slots[cpu])
        elif out.blocks_to_load:
            tokens.loads = FakeLoad(self, out.blocks_to_load, self.clock.now() + self.load_delay_s)
        bs = self.block_size
        for s in out.scheduled:
            all_tokens = s.request.all_token_ids
            if all_tokens[-1] == PLACEHOLDER:
                assert PLACEHOLDER not in all_tokens[:-1], f"{s.request.request_id}: more than one token on its way"
                all_tokens[-1] = self.sampled[s.request.request_id]
            for pos in range(s.start):  # the context must already be in the cache
                got = self.device_slots[s.block_ids[pos // bs]][pos % bs]
                assert got == all_tokens[pos], f"{s.request.request_id}: KV at {pos} holds {got}, want {all_tokens[pos]}"
            for pos in range(s.start, s.start + s.num_new_tokens):
                self.device_slots[s.block_ids[pos // bs]][pos % bs] = all_tokens[pos]
            end = s.start + s.num_new_tokens
            token = next_token(all_tokens[:end], self.config.vocab_size) if s.samples else None
            if token is not None:
                self.sampled[s.request.request_id] = token
            tokens.append(token)
        if self.clock is not None:
            self.clock.advance(self.step_time)
        return tokens


def prompt(n: int, seed: int) -> list[int]:
    """A seeded random prompt of `n` tokens that never contains EOS (0) or its trigger (999)."""
    rng = random.Random(seed)
    return [rng.randrange(1, 998) for _ in range(n)]


def make_engine(num_blocks: int = 64, num_cpu_blocks: int = 0, clock: FakeClock | None = None,
                staircase: StepStaircase | None = None, **settings) -> Engine:
    """The real engine over a `FakeRunner`; `staircase`: what its start-up timing finds."""
    clock = clock or FakeClock()
    config = EngineConfig(model="fake", num_kv_blocks=num_blocks, check_invariants=True, **settings)
    runner = FakeRunner(num_blocks, config.block_size, num_cpu_blocks, clock=clock)
    runner.staircase = staircase
    return Engine(config, clock=clock, runner=runner)


def finished_outputs(engine: Engine, collector: OutputCollector, steps: int = 1) -> dict[str, RequestOutput]:
    """Run `steps` steps; the requests they finished, whole."""
    done: dict[str, RequestOutput] = {}
    for _ in range(steps):
        done.update({o.request_id: o for o in collector.fold(engine.step())})
    return done


def run_to_completion(engine: Engine, max_steps: int = 10_000, stop_early: bool = False) -> dict[str, list[int]]:
    """Step until idle (or for `max_steps` steps with `stop_early`); the final output tokens of
    each request that finished (all of them, also those made by steps run before this call:
    read off the engine's requests, not the step deltas)."""
    done: dict[str, list[int]] = {}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            return done
        requests = dict(engine.scheduler.requests)
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(requests[out.request_id].output_token_ids)
    if stop_early:
        return done
    raise AssertionError(f"engine still busy after {max_steps} steps")
