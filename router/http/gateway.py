"""The OpenAI-compatible HTTP API (FastAPI on uvicorn), beside the gRPC frontend, on the same router.

`shunter serve --http-port 8000` starts it in the gRPC frontend's process and event loop, so both
share the one `Router` (its journal, `max_in_flight`, drain). Routes: `POST /v1/completions`,
`POST /v1/chat/completions` (JSON, or server-sent events with `stream: true`), `GET /v1/models`,
`GET /health` (200, or 503 while draining or with no healthy replica; open without a key). The
request checks are the gRPC path's (`request.py`: the same tokenization, chat template and
validator); errors are OpenAI's shape (`errors.py`). Bodies are parsed by pydantic from
bytes, so malformed JSON, a wrong type and an unknown field are all a 400 naming the field, and a
body over `max_body_bytes` is a 413 before it is read whole. A client that disconnects has its
requests aborted (streams: by Starlette's disconnect watch; whole answers: by `_unless_gone`).
uvicorn runs as a task without its own signal handling: `shunter serve` owns SIGINT/SIGTERM and
drains both front doors through the router.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shunter.router.security import check_bearer
from shunter.router.http.errors import ApiError, from_exception, from_validation, invalid
from shunter.router.http.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    SamplingFields,
    StreamOptions,
)
from shunter.router.http.request import Plan, chat_plan, completion_plan
from shunter.router.http.serving import ChatChunkFormat, ChunkFormat, Meta, choice_events, complete, sse_body
from shunter.router.core import Router
from shunter.router.security import Security

if TYPE_CHECKING:
    from shunter.router.metrics import FrontendMetrics

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 4 * 1024 * 1024  # as gRPC's default largest message
SHUTDOWN_GRACE_S = 1.0
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
R = TypeVar("R", bound=SamplingFields)


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def _error(e: ApiError) -> Response:
    return Response(e.body(), e.status, e.headers, media_type="application/json")


def _api_error(e: Exception, what: str) -> ApiError:
    """`e` as the client's error; an unexpected one is logged here (the client reads only a 500)."""
    error = from_exception(e)
    if error.status == 500:
        log.error("%s failed", what, exc_info=e)
    return error


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` is a 413, by its Content-Length before it is read,
    or as soon as a chunked body passes the limit."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self) -> ApiError:
        return ApiError(413, f"body: larger than this server takes ({self.max_bytes} bytes)", param="body")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if int(dict(scope["headers"]).get(b"content-length", 0)) > self.max_bytes:  # the server checked it is a number
            await _error(self._too_large())(scope, receive, send)
            return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()
            return message

        await self.app(scope, limited, send)


async def _unless_gone(work: Awaitable[Any], request: Request) -> Any:
    """`work`'s result, or cancel it (aborting its requests) when the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ApiError(499, "the client closed the connection", "client_closed")  # nobody reads it
    return task.result()


class Gateway:
    """The routes, over one router serving one model."""

    def __init__(self, router: Router, model: str, api_keys: tuple[bytes, ...] = (),
                 metrics: FrontendMetrics | None = None) -> None:
        self.router, self.model, self.api_keys, self.metrics = router, model, api_keys, metrics
        self.created = int(time.time())

    def app(self, max_body_bytes: int = MAX_BODY_BYTES) -> BodyLimit:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        app.add_api_route("/health", self.health, methods=["GET"])
        app.add_api_route("/v1/models", self.models, methods=["GET"])
        if self.metrics is not None:
            app.add_api_route("/metrics", self.prometheus, methods=["GET"])
        app.add_api_route("/v1/completions", self.completions, methods=["POST"])
        app.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])
        app.add_exception_handler(ApiError, self._api_error)
        app.add_exception_handler(StarletteHTTPException, self._http_error)
        app.add_exception_handler(Exception, self._unexpected)  # uvicorn logs the traceback
        return BodyLimit(app, max_body_bytes)

    @staticmethod
    async def _api_error(request: Request, e: ApiError) -> Response:
        return _error(e)

    @staticmethod
    async def _http_error(request: Request, e: StarletteHTTPException) -> Response:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return _error(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", kind))

    @staticmethod
    async def _unexpected(request: Request, e: Exception) -> Response:
        return _error(from_exception(e))

    def _authorize(self, request: Request) -> None:
        if self.api_keys and not check_bearer(request.headers.get("authorization"), self.api_keys):
            raise ApiError(401, "authorization: send 'Bearer <key>' with one of the server's API keys",
                           param="authorization", code="invalid_api_key")

    async def health(self) -> Response:
        if self.router.draining:
            return _error(ApiError(503, "the server is draining", "service_unavailable_error"))
        if not any(slot.healthy for slot in self.router.slots.values()):
            return _error(ApiError(503, "no healthy replica", "service_unavailable_error"))
        return Response(b"", 200)

    async def prometheus(self) -> Response:
        """The frontend's Prometheus page (the same registry as --metrics-port's), on the API port."""
        return Response(generate_latest(self.metrics.registry), 200, media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        return _json(ModelList(data=[ModelCard(id=self.model, created=self.created)]))

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, CompletionRequest, completion_plan, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, ChatCompletionRequest, chat_plan, chat=True)

    def _parse(self, body: bytes, kind: type[R]) -> R:
        try:
            req = kind.model_validate_json(body)
        except ValidationError as e:
            raise from_validation(e) from None
        if req.model is not None and req.model != self.model:
            raise ApiError(404, f"model: {req.model!r} is not served here (GET /v1/models lists {self.model!r})",
                           param="model", code="model_not_found")
        if req.stream_options is not None and not req.stream:
            raise invalid("stream_options: only with stream: true")
        return req

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        """A request refused before it reaches the router counts as rejected, as on the gRPC path."""
        try:
            yield
        except (ApiError, ValueError) as e:
            error = e if isinstance(e, ApiError) else invalid(str(e))
            if error.status == 400:
                self.router.counters.reject("invalid")
            raise error from None

    async def _generate(self, request: Request, kind: type[R], planner: Callable[[Any, Any], Plan],
                        chat: bool) -> Response:
        start = time.perf_counter()
        self._authorize(request)
        info = self.router.info
        with self._counted():
            req = self._parse(await request.body(), kind)
            plan = planner(req, info)
        meta = Meta(plan.id, self.model)
        requests = self.metrics.requests if self.metrics is not None else None
        events = choice_events(self.router, info.tokenizer, plan, None if requests is None else
                               lambda choice: requests.stream(start, len(choice.prompt_token_ids)))
        token_ids = getattr(req, "return_token_ids", False)  # completions only
        if not req.stream:
            try:
                return _json(await _unless_gone(complete(events, plan, meta, info.tokenizer, chat, token_ids), request))
            except Exception as e:
                raise _api_error(e, plan.id) from e
        try:
            first = await anext(events)  # an error before any token still gets its status
        except Exception as e:
            await events.aclose()
            raise _api_error(e, plan.id) from e
        fmt = (ChatChunkFormat(meta, plan, info.tokenizer) if chat
               else ChunkFormat(meta, plan, info.tokenizer, token_ids))
        options = req.stream_options or StreamOptions()
        body = sse_body(first, events, fmt, plan, options.include_usage, options.continuous_usage_stats)
        return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the process that embeds it owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    """Bind now, so a busy port is an OSError at construction (as the gRPC frontend's) and port 0 is known."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class HttpGateway:
    """The HTTP server's life: `start()` in the router's event loop, `stop()` after the router drained."""

    def __init__(self, router: Router, host: str = "127.0.0.1", port: int = 8000, model: str = "",
                 security: Security | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 metrics: FrontendMetrics | None = None) -> None:
        """`security`: the gRPC frontend's API keys and TLS files apply here too (HTTPS then)."""
        security = security or Security()
        self.sock = _listen(host, port)
        self.port: int = self.sock.getsockname()[1]
        self.scheme = "https" if security.tls_files else "http"
        app = Gateway(router, model, security.api_keys, metrics).app(max_body_bytes)
        tls_options = security.tls_files.uvicorn_options() if security.tls_files else {}
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, ws="none", proxy_headers=False,
                                server_header=False, timeout_graceful_shutdown=SHUTDOWN_GRACE_S, **tls_options)
        self.server = _Server(config)
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name="http gateway")
        while not self.server.started:
            if self.task.done():
                self.task.result()  # its failure, raised here
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Close the port and the idle connections; streams still running get SHUTDOWN_GRACE_S, then are cut."""
        if self.task is None:
            return
        self.server.should_exit = True
        await self.task
        self.sock.close()
