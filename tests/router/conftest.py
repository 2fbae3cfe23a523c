"""A real gRPC server (frontend + router) on loopback, running its own event loop on a thread."""
from __future__ import annotations

from typing import Callable

import pytest

from shunter.router.background import BackgroundServer
from shunter.router.router import RouterConfig


@pytest.fixture
def serve() -> Callable[..., BackgroundServer]:
    servers: list[BackgroundServer] = []

    def start(clients: list, config: RouterConfig | None = None) -> BackgroundServer:
        servers.append(BackgroundServer(clients, config))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session ."""
    import os

    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=80 * 1024**2, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield ray
    ray.shutdown()
