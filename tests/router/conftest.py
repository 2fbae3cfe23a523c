"""A real gRPC server (frontend + router) on loopback, running its own event loop on a thread."""
from __future__ import annotations

import asyncio
import threading
from typing import Callable

import grpc
import pytest

from shunter.proto import generation_pb2_grpc as pb_grpc
from shunter.router.frontend import Frontend
from shunter.router.router import Router, RouterConfig


class ServerThread:
    def __init__(self, clients: list, config: RouterConfig | None = None) -> None:
        self.clients = clients
        self.loop = asyncio.new_event_loop()
        self.router = Router(clients, config or RouterConfig(poll_wait_s=0.05, rebalance=False))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.frontend: Frontend = self.call(self._start())
        self.port = self.frontend.port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.GenerationStub(self.channel)

    async def _start(self) -> Frontend:
        await self.router.start()
        frontend = Frontend(self.router, "127.0.0.1", 0, model="fake")
        await frontend.start()
        return frontend

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.channel.close()
        self.call(self.frontend.server.stop(grace=None))
        self.call(self.router.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        for c in self.clients:
            if hasattr(c, "kill"):
                c.kill()


@pytest.fixture
def serve() -> Callable[..., ServerThread]:
    servers: list[ServerThread] = []

    def start(clients: list, config: RouterConfig | None = None) -> ServerThread:
        servers.append(ServerThread(clients, config))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (workers can import `tests.fakes`)."""
    import os

    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=80 * 1024**2, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield ray
    ray.shutdown()
