"""torch's threads follow the CPUs a replica is given (issue: 52.7 s with every core vs 3.3 s with one)."""
from __future__ import annotations

import os
import sys
import types

import pytest
import torch

from shunter.replica import threads
from shunter.replica.engine import Engine
from shunter.replica.engine_config import EngineConfig


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def fake_ray(assigned: dict | None) -> types.ModuleType:
    """A `ray` module whose runtime context reports `assigned` (None: this is the driver)."""
    def get_assigned_resources():
        if assigned is None:
            raise AssertionError("only available when the process is a worker")
        return assigned

    ray = types.ModuleType("ray")
    ray.is_initialized = lambda: True
    ray.get_runtime_context = lambda: types.SimpleNamespace(get_assigned_resources=get_assigned_resources)
    return ray


def test_default_is_the_process_affinity(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert threads.available_cpus() == 3


@pytest.mark.parametrize(("assigned", "expected"), [({"CPU": 2.0}, 2), ({"CPU": 0.5}, 1), (None, 7), ({}, 7)])
def test_inside_a_ray_actor_the_default_is_its_num_cpus(monkeypatch, assigned, expected):
    monkeypatch.setitem(sys.modules, "ray", fake_ray(assigned))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(7)), raising=False)
    assert threads.available_cpus() == expected


def test_engine_sets_torchs_threads_to_the_configured_number(restore_threads):
    torch.set_num_threads(2)
    Engine(EngineConfig(model="random:tiny", device="cpu", num_kv_blocks=16, num_threads=1))
    assert torch.get_num_threads() == 1


def test_engine_default_uses_the_available_cpus(monkeypatch, restore_threads):
    monkeypatch.setattr(threads, "available_cpus", lambda: 1)
    torch.set_num_threads(2)
    Engine(EngineConfig(model="random:tiny", device="cpu", num_kv_blocks=16))
    assert torch.get_num_threads() == 1


def test_num_threads_must_be_positive():
    with pytest.raises(ValueError, match="num_threads"):
        EngineConfig(num_threads=0)
