"""A real gRPC server (frontend + router) on loopback, running its own event loop on a thread."""
from __future__ import annotations

from typing import Callable

import pytest

from shunter.router.router import RouterConfig
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
