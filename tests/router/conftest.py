"""A real gRPC server (frontend + router) on loopback, running its own event loop on a thread."""
from __future__ import annotations

from typing import Callable

import pytest

from shunter.router.core import RouterConfig
from shunter.testing.background import BackgroundServer


@pytest.fixture
def serve() -> Callable[..., BackgroundServer]:
    servers: list[BackgroundServer] = []

    def start(clients: list, config: RouterConfig | None = None) -> BackgroundServer:
        servers.append(BackgroundServer(clients, config))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
