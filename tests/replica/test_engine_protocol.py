"""The real engine and the fake one keep one contract: same methods, same signatures, same types."""
from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

from shunter.replica.engine import Engine
from shunter.replica.engine_protocol import EngineOutput, EngineProtocol, EngineStats, MigrationState
from shunter.sampling_params import SamplingParams
from shunter.testing.fake_engine import FakeEngine, reference_output
from tests.replica.fakes import make_engine

METHODS = [name for name, member in vars(EngineProtocol).items() if inspect.isfunction(member) and not name.startswith("_")]


def _hints(fn) -> dict:
    return typing.get_type_hints(fn, globalns=vars(__import__("shunter.replica.engine_protocol", fromlist=["x"])))


@pytest.mark.parametrize("engine_class", [Engine, FakeEngine])
@pytest.mark.parametrize("method", METHODS)
def test_each_engine_has_the_protocols_signature(engine_class, method):
    want, got = inspect.signature(getattr(EngineProtocol, method)), inspect.signature(getattr(engine_class, method))
    assert list(got.parameters) == list(want.parameters), f"{engine_class.__name__}.{method}{got} != {want}"
    assert _hints(getattr(engine_class, method)) == _hints(getattr(EngineProtocol, method))


def test_the_protocol_covers_what_the_replica_loop_calls():
    assert set(METHODS) >= {"add_request", "abort_request", "step", "has_unfinished_requests", "stats",
                            "drain_cache_events", "export_request", "import_request"}


def _drive(engine) -> tuple[list[EngineOutput], EngineStats]:
    prompt = [5, 6, 7, 8] * 5
    engine.add_request("a", prompt, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    outs: list[EngineOutput] = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    return outs, engine.stats()


@pytest.mark.parametrize("make", [make_engine, lambda: FakeEngine(step_time=0)], ids=["engine", "fake"])
def test_both_engines_speak_the_same_types_and_tokens(make):
    engine = make()
    assert isinstance(engine, EngineProtocol)
    outs, stats = _drive(engine)
    assert all(type(o) is EngineOutput for o in outs) and type(stats) is EngineStats
    assert [t for o in outs for t in o.new_token_ids] == reference_output([5, 6, 7, 8] * 5, 6, ignore_eos=True)
    assert outs[-1].finish_reason == "length" and outs[-1].num_output_tokens == 6
    assert all(type(e).__name__ == "CacheEvent" for e in engine.drain_cache_events())


@pytest.mark.parametrize("make", [make_engine, lambda: FakeEngine(step_time=0)], ids=["engine", "fake"])
def test_export_import_round_trip_resumes_with_kv_and_says_how_much(make):
    source, target = make(), make()
    prompt = [9, 8, 7, 6] * 5
    source.add_request("m", prompt, SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))
    made = [t for _ in range(4) for o in source.step() for t in o.new_token_ids]
    state = source.export_request("m")
    # Every token it made, also one still on its way from the device (async scheduling).
    assert type(state) is MigrationState and state.output_token_ids[: len(made)] == made
    made = state.output_token_ids
    resumed = target.import_request(state)
    assert isinstance(resumed, int) and resumed > 0
    assert target.import_request(dataclasses.replace(state.without_kv(), request_id="m-copy")) == 0
    rest: dict[str, list[int]] = {"m": [], "m-copy": []}
    while target.has_unfinished_requests():
        for o in target.step():
            rest[o.request_id] += o.new_token_ids
    assert made + rest["m"] == reference_output(prompt, 10, ignore_eos=True)
    assert made + rest["m-copy"] == reference_output(prompt, 10, ignore_eos=True)  # recomputed, same tokens
