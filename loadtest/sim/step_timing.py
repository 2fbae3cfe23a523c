"""Timing a real engine's steps with their shapes: the samples a cost model is fitted to.

A step is timed as a whole (`Engine.step()`, scheduling included: what a simulated step stands
for), and its `StepShape` is read from what the scheduler handed the runner. The cross-check
showed why the samples must come from where the engine serves: two SmolLM2 replicas as Ray
actors on this 2-core machine ran their prefill steps 1.3x slower than one engine stepping
alone, which a model fitted alone cannot know. So Ray actors can time their own steps too:
`engine_logging_steps` is an engine factory (`module:callable(config)`, as `spawn` takes) that
appends each step to a JSON-lines file in the directory named by `$SHUNTER_STEP_LOG_DIR`.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shunter.loadtest.sim.costs import SHAPE_FIELDS, StepShape

Sample = tuple[StepShape, float]
STEP_LOG_ENV = "SHUNTER_STEP_LOG_DIR"
ENGINE_FACTORY = "shunter.loadtest.sim.step_timing:engine_logging_steps"


def time_steps(engine: Any, sink: Callable[[StepShape, float], None]) -> None:
    """Wrap `engine` so that every step that computes tokens reports (shape, wall seconds) to `sink`."""
    execute, step = engine.runner.execute, engine.step
    shapes: list[StepShape] = []

    def recording(out):
        shapes.append(StepShape.of(out, engine.block_size))
        return execute(out)

    def timed():
        started = time.perf_counter()
        outputs = step()
        if shapes:
            shape = shapes.pop()
            if shape.num_tokens:
                sink(shape, time.perf_counter() - started)
        return outputs

    engine.runner.execute, engine.step = recording, timed


def engine_logging_steps(config: Any) -> Any:
    """The real engine, each of its steps appended to `$SHUNTER_STEP_LOG_DIR/steps-PID.jsonl`."""
    from shunter.replica.engine import Engine

    engine = Engine(config)
    log = open(Path(os.environ[STEP_LOG_ENV]) / f"steps-{os.getpid()}.jsonl", "a", buffering=1)  # noqa: SIM115 (the engine's lifetime)
    time_steps(engine, lambda shape, seconds: log.write(json.dumps([*(getattr(shape, f) for f in SHAPE_FIELDS),
                                                                      seconds]) + "\n"))
    return engine


def read_step_logs(directory: Path) -> list[Sample]:
    """Every step logged in `directory` by `engine_logging_steps`, file by file."""
    samples = []
    for path in sorted(directory.glob("steps-*.jsonl")):
        for line in path.read_text().splitlines():
            *shape, seconds = json.loads(line)
            samples.append((StepShape(*shape), seconds))
    return samples
