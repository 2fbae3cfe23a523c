"""Engines that time their own steps: in this process (a sink) and in a Ray actor's (a log file)."""
from __future__ import annotations

from shunter.loadtest.sim.costs import StepShape
from shunter.loadtest.sim.step_timing import STEP_LOG_ENV, engine_logging_steps, read_step_logs, time_steps
from shunter.replica.engine_config import EngineConfig
from shunter.sampling_params import SamplingParams
from tests.replica.fakes import make_engine, prompt


def test_every_step_that_computes_reports_its_shape_and_wall_time():
    engine = make_engine(num_blocks=64, max_num_batched_tokens=32)
    engine.runner.step_time = 0.0
    samples: list[tuple[StepShape, float]] = []
    time_steps(engine, lambda shape, seconds: samples.append((shape, seconds)))
    engine.add_request("a", prompt(40, 1), SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    engine.add_request("b", prompt(8, 2), SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    shapes = [s for s, _ in samples]
    assert [s.num_tokens for s in shapes] == [32, 16, 2, 2]  # 32-token budget: a's chunk; a's rest + b; two decodes of both
    assert shapes[1] == StepShape(num_tokens=16, num_seqs=2, num_rows=2, kv_tokens=40 + 8,
                                  attn_keys=8 * 32 + 8 * 9 // 2 + 8 * 9 // 2, swap_tokens=0)
    assert all(seconds > 0 for _, seconds in samples)


def test_an_engine_built_by_the_factory_logs_its_steps_where_the_environment_says(tmp_path, monkeypatch):
    monkeypatch.setenv(STEP_LOG_ENV, str(tmp_path))
    engine = engine_logging_steps(EngineConfig(model="random:tiny", device="cpu", num_kv_blocks=16))
    engine.add_request("a", [3, 4, 5, 6, 7], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    samples = read_step_logs(tmp_path)
    assert [(s.num_tokens, s.num_rows) for s, _ in samples] == [(5, 1), (1, 1)]
    assert all(seconds > 0 for _, seconds in samples)
