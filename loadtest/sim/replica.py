"""One simulated replica: the real `Engine` over a cost-model runner, stepped by the event loop.

It keeps `ReplicaCore`'s contract: requests and the migration calls are commands run between
two steps (a command that arrives while a step runs waits for its end), and what a step made is
published when the step ends, not when it was computed. A free replica starts its next step once
everything else due at the same instant has run (the loop thread drains its command queue
before it steps), so requests arriving together are scheduled together. A command that copies KV
blocks (a migration's gather on the source, its scatter on the target) holds the replica for the
copy's time, priced by the caller: the next step waits for it, as it would on a device.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

from shunter.loadtest.sim.costs import CostModel
from shunter.loadtest.sim.events import EventLoop, ReplicaClock
from shunter.loadtest.sim.runner import SimRunner, TokenFn
from shunter.replica.engine import Engine
from shunter.replica.engine_config import EngineConfig
from shunter.replica.engine_protocol import EngineOutput
from shunter.replica.gc_tuning import leave_gc_untuned
from shunter.replica.memory import num_cpu_blocks
from shunter.sampling_params import SamplingParams

StepDone = Callable[["SimReplica", list[EngineOutput]], None]
Then = Optional[Callable[[Any], None]]  # what to do with a command's result, once it is done
Busy = Optional[Callable[[Any], float]]  # seconds a command's result held the replica (its KV copy)


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
        leave_gc_untuned()  # engines come and go by the thousand here: none may freeze the heap
        self.engine = Engine(config, clock=self.clock, runner=self.runner)
        self.busy = False
        self._kick_due = False
        self.copy_s = 0.0  # virtual seconds spent copying migrated KV in or out
        self._commands: deque[tuple[Callable[..., Any], tuple, Then, Busy]] = deque()

    # ---- commands (run between steps) ----------------------------------------------------------
    def submit(self, request_id: str, prompt: list[int], params: SamplingParams) -> None:
        """Like `ReplicaCore.submit`: the engine counts the request from when the command runs."""
        self.command(self.engine.add_request, (request_id, prompt, params))

    def command(self, fn: Callable[..., Any], args: tuple, then: Then = None, busy: Busy = None) -> None:
        """Run `fn(*args)` between steps; `then(result)` once it is done: at once, or after the
        `busy(result)` seconds it holds the replica (no step runs meanwhile)."""
        if self.busy:
            self._commands.append((fn, args, then, busy))
            return
        self._run(fn, args, then, busy)
        self._kick()

    def _run(self, fn: Callable[..., Any], args: tuple, then: Then, busy: Busy) -> None:
        result = fn(*args)
        seconds = busy(result) if busy is not None else 0.0
        if seconds > 0:
            self.busy = True
            self.copy_s += seconds
            self.loop.after(seconds, self._copied, then, result)
        elif then is not None:
            then(result)

    def _copied(self, then: Then, result: Any) -> None:
        self.busy = False
        if then is not None:
            then(result)
        self._drain()
        self._kick()

    def _drain(self) -> None:
        """Queued commands, in order, until one holds the replica (the rest wait for it)."""
        commands = self._commands
        while commands and not self.busy:
            self._run(*commands.popleft())

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
        self._drain()
        if not self.busy and not self._kick_due and self.loop.runs_next_now():
            self.loop.num_events += 1  # `_kick`'s event, run here: nothing else is due first
            self._step()
        else:
            self._kick()
