"""Prometheus pages: one registry each, served over HTTP on a thread of their own.

Each server (the frontend, each replica actor) has its own `CollectorRegistry`, never the
process-wide default, so several servers in one process (tests, benchmarks) do not collide.
The frontend's page holds the request metrics, every replica's engine metrics and the router's
counters; a replica's page holds its own engine's (`collectors.py`). Both add the process
collector (memory, CPU time, open files of the process that serves the page).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from shunter.router.metrics.collectors import ReplicaCollector, RouterCollector
from shunter.router.metrics.options import MetricsAddress
from shunter.router.metrics.requests import RequestMetrics

if TYPE_CHECKING:
    from shunter.replica.replica_core import ReplicaCore
    from shunter.router.core import Router


@dataclass
class MetricsPage:
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.server_port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_registry(registry: CollectorRegistry, host: str, port: int) -> MetricsPage:
    """Serve `registry` at http://host:port/metrics (OSError if the port is taken)."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsPage(server, thread)


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


@dataclass
class FrontendMetrics:
    requests: RequestMetrics  # what the gRPC servicer and the HTTP gateway observe per stream
    page: MetricsPage
    registry: CollectorRegistry  # also rendered by the HTTP gateway's GET /metrics


def serve_frontend_metrics(router: Router, address: MetricsAddress) -> FrontendMetrics:
    """The frontend's page; the router must have started (its model limits size the buckets)."""
    registry = _registry()
    requests = RequestMetrics(registry, address.model, router.info.limits.max_model_len)
    registry.register(RouterCollector(router, address.model))
    return FrontendMetrics(requests, serve_registry(registry, address.host, address.port), registry)


def serve_replica_metrics(replica_id: str, core: ReplicaCore, address: MetricsAddress) -> MetricsPage:
    """A replica's own page, from the stats its engine thread last published."""
    registry = _registry()
    registry.register(ReplicaCollector(replica_id, address.model, lambda: core.outbox.stats))
    return serve_registry(registry, address.host, address.port)
