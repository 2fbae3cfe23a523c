"""One simulated replica: the real `Engine` over a cost-model runner, stepped by the event loop.

It keeps `ReplicaCore`'s contract: requests, exports and imports are commands run between two
steps (a command that arrives while a step runs waits for its end), and what a step made is
published when the step ends, not when it was computed. A free replica starts its next step once
everything else due at the same instant has run (the loop thread drains its command queue
before it steps), so requests arriving together are scheduled together.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

from shunter.loadtest.sim.costs import CostModel
from shunter.loadtest.sim.events import EventLoop, ReplicaClock
from shunter.loadtest.sim.runner import SimRunner, TokenFn
from shunter.replica.engine import Engine
from shunter.replica.engine_config import EngineConfig
from shunter.replica.engine_protocol import EngineOutput, MigrationState
from shunter.replica.memory import num_cpu_blocks
from shunter.sampling_params import SamplingParams

StepDone = Callable[["SimReplica", list[EngineOutput]], None]


class SimReplica:
    def __init__(self, replica_id: str, loop: EventLoop, config: EngineConfig, cost: CostModel, on_step: StepDone,
                 large_cache: bool = False, token_fn: TokenFn | None = None) -> None:
        """`on_step(replica, outputs)` runs when each step ends (the router's poll of it)."""
        self.replica_id, self.loop, self.on_step, self.large_cache = replica_id, loop, on_step, large_cache
        self.clock = ReplicaClock(loop)
        block_bytes = cost.kv_bytes_per_token * config.block_size
        num_blocks = config.num_kv_blocks or cost.kv_blocks(config.block_size)
        self.runner = SimRunner(cost, self.clock, num_blocks, num_cpu_blocks(config, block_bytes), config.block_size,
                                token_fn)
        self.engine = Engine(config, clock=self.clock, runner=self.runner)
        self.busy = False
        self._kick_due = False
        self._commands: deque[tuple[Callable[..., Any], tuple, Callable[[Any], None] | None]] = deque()

    # ---- commands (run between steps) ----------------------------------------------------------
    def submit(self, request_id: str, prompt: list[int], params: SamplingParams) -> None:
        """Like `ReplicaCore.submit`: the engine counts the request from when the command runs."""
        self._command(self.engine.add_request, (request_id, prompt, params))

    def export(self, request_id: str, then: Callable[[MigrationState | None], None]) -> None:
        self._command(self.engine.export_request, (request_id,), then)

    def import_(self, state: MigrationState, then: Callable[[int], None]) -> None:
        self._command(self.engine.import_request, (state,), then)

    def _command(self, fn: Callable[..., Any], args: tuple, then: Callable[[Any], None] | None = None) -> None:
        if self.busy:
            self._commands.append((fn, args, then))
            return
        result = fn(*args)
        if then is not None:
            then(result)
        self._kick()

    # ---- steps -----------------------------------------------------------------------------------
    def _kick(self) -> None:
        if not self.busy and not self._kick_due:
            self._kick_due = True
            self.loop.after(0.0, self._step)

    def _step(self) -> None:
        self._kick_due = False
        if self.busy or not self.engine.has_unfinished_requests():
            return
        outputs = self.engine.step()
        self.busy = True
        self.loop.after(self.clock.lead, self._step_done, outputs)

    def _step_done(self, outputs: list[EngineOutput]) -> None:
        self.clock.lead = 0.0
        self.busy = False
        self.on_step(self, outputs)
        commands = self._commands
        while commands:
            fn, args, then = commands.popleft()
            result = fn(*args)
            if then is not None:
                then(result)
        self._kick()
