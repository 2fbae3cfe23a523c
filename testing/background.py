"""The gRPC server (frontend + router), and optionally the HTTP gateway, on an event loop of its own thread.

For callers that drive the server with a blocking client in the same process: benchmarks,
notebooks, tests. `shunter serve` does not use it (it owns its event loop).
"""
from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any, Sequence

import grpc

from shunter.proto import generation_pb2_grpc as pb_grpc
from shunter.router.grpc import Frontend
from shunter.router.core import Router, RouterConfig
from shunter.router.security import Security
from shunter.router.core import StateStore

if TYPE_CHECKING:
    from shunter.router.metrics import FrontendMetrics

# The router's start waits for every replica's model: Ray actors importing torch and loading a
# checkpoint on a busy 2-core machine have taken over a minute.
START_TIMEOUT_S = 180.0


class BackgroundServer:
    """Start with the replica clients (and a state store: in memory by default); `stub` is a
    blocking client on 127.0.0.1; `close()` stops it all (and kills in-process replicas). With TLS
    (`security`) the stub is of no use: connect your own. With `metrics`, the frontend's
    Prometheus page is served on a free port of 127.0.0.1 (`metrics_url`); with `http`, the
    OpenAI HTTP API on `http_url` (with the same `security`)."""

    def __init__(self, clients: Sequence[Any], config: RouterConfig | None = None, model: str = "fake",
                 metrics: bool = False, security: Security | None = None, state: StateStore | None = None,
                 http: bool = False) -> None:
        self.clients = list(clients)
        self.loop = asyncio.new_event_loop()
        self.router = Router(self.clients, config or RouterConfig(poll_wait_s=0.05, rebalance=False), state=state)
        self.thread = threading.Thread(target=self.loop.run_forever, name="shunter-server", daemon=True)
        self.thread.start()
        self.metrics: FrontendMetrics | None = None
        try:
            self.frontend: Frontend = self.call(self._start(model, metrics, security), START_TIMEOUT_S)
        except BaseException:
            # Nothing will call close(): free the replicas (a Ray actor keeps its CPUs, and every
            # later placement on the cluster would wait for them) and the loop, then say why.
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._kill_clients()
            raise
        self.gateway = self.call(self._start_http(model, security)) if http else None
        self.port = self.frontend.port
        self.http_url = f"{self.gateway.scheme}://127.0.0.1:{self.gateway.port}/v1" if self.gateway else None
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.GenerationStub(self.channel)

    async def _start(self, model: str, metrics: bool, security: Security | None) -> Frontend:
        await self.router.start()
        if metrics:
            from shunter.router.metrics import MetricsAddress
            from shunter.router.metrics import serve_frontend_metrics

            self.metrics = serve_frontend_metrics(self.router, MetricsAddress("127.0.0.1", 0, model))
        frontend = Frontend(self.router, "127.0.0.1", 0, model=model, metrics=self.metrics, security=security)
        await frontend.start()
        return frontend

    async def _start_http(self, model: str, security: Security | None):
        from shunter.router.http import HttpGateway  # FastAPI only where HTTP is asked for

        gateway = HttpGateway(self.router, "127.0.0.1", 0, model=model, security=security, metrics=self.metrics)
        await gateway.start()
        return gateway

    @property
    def metrics_url(self) -> str:
        if self.metrics is None:
            raise RuntimeError("started without metrics")
        return f"http://127.0.0.1:{self.metrics.page.port}/metrics"

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
        if self.metrics is not None:
            self.metrics.page.close()
        self._kill_clients()

    def _kill_clients(self) -> None:
        for c in self.clients:
            if hasattr(c, "kill"):
                c.kill()
