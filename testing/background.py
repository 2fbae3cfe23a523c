"""The gRPC server (frontend + router), and optionally the HTTP gateway, on an event loop of its own thread.

For callers that drive the server with a blocking client in the same process: benchmarks,
notebooks, tests. `shunter serve` does not use it (it owns its event loop).
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Sequence

import grpc

from shunter.proto import generation_pb2_grpc as pb_grpc
from shunter.router.api_keys import ApiKeys
from shunter.router.frontend import Frontend
from shunter.router.router import Router, RouterConfig


class BackgroundServer:
    """Start with the replica clients; `stub` is a blocking client on 127.0.0.1; with `http=True`
    the OpenAI HTTP API is on `http_url` too; `close()` stops it all (and kills in-process replicas)."""

    def __init__(self, clients: Sequence[Any], config: RouterConfig | None = None, model: str = "fake",
                 http: bool = False, api_keys: ApiKeys | None = None) -> None:
        self.clients = list(clients)
        self.loop = asyncio.new_event_loop()
        self.router = Router(self.clients, config or RouterConfig(poll_wait_s=0.05, rebalance=False))
        self.thread = threading.Thread(target=self.loop.run_forever, name="shunter-server", daemon=True)
        self.thread.start()
        self.frontend: Frontend = self.call(self._start(model, api_keys))
        self.gateway = self.call(self._start_http(model, api_keys)) if http else None
        self.port = self.frontend.port
        self.http_url = f"http://127.0.0.1:{self.gateway.port}/v1" if self.gateway else None
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.GenerationStub(self.channel)

    async def _start(self, model: str, api_keys: ApiKeys | None) -> Frontend:
        await self.router.start()
        frontend = Frontend(self.router, "127.0.0.1", 0, model=model, api_keys=api_keys)
        await frontend.start()
        return frontend

    async def _start_http(self, model: str, api_keys: ApiKeys | None):
        from shunter.router.http_gateway import HttpGateway  # FastAPI only where HTTP is asked for

        gateway = HttpGateway(self.router, "127.0.0.1", 0, model=model, api_keys=api_keys)
        await gateway.start()
        return gateway

    def call(self, coro, timeout: float = 60) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.channel.close()
        if self.gateway is not None:
            self.call(self.gateway.stop())
        self.call(self.frontend.server.stop(grace=None))
        self.call(self.router.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        for c in self.clients:
            if hasattr(c, "kill"):
                c.kill()
