"""The load client's transport seam: what it sends, what comes back, and the gRPC backend.

The driver (`load_driver.py`) knows only `Backend.stream`: one request in, its chunks out, a
`BackendError` with the status code when the server refuses or fails it. Two backends: gRPC's
`Generate`, and the OpenAI HTTP gateway's `/v1/completions` (its statuses read as gRPC codes).
gRPC is imported when a backend is made, so `shunter bench serve --help` stays instant.
"""
from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
PRIORITY_ENUM = {"interactive": 1, "batch": 2}  # shunter.v1.Priority


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One request as sent: greedy, exactly `max_tokens` tokens (EOS ignored), with its class and
    targets (None: the server's class default)."""

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    priority: str = "interactive"
    ttft_ms: float | None = None
    tbt_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one streamed message carries; `finish_reason` and `cached_tokens` are set on the last."""

    token_ids: list[int]
    replica_id: str = ""
    finish_reason: str = ""
    cached_tokens: int = 0


class BackendError(Exception):
    """The server refused or failed a request; `code` is its status name (RESOURCE_EXHAUSTED, ...)."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


class Backend(Protocol):
    def stream(self, request: Outgoing) -> AsyncIterator[Chunk]:
        """The request's chunks as they arrive; raises `BackendError`."""
        ...

    async def close(self) -> None: ...


def loopback_target(text: str) -> str:
    """An argparse `type` for `--target HOST:PORT`: only this machine may be loaded."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"want HOST:PORT (e.g. 127.0.0.1:50051), got {text!r}")
    if host not in LOOPBACK_HOSTS:
        raise argparse.ArgumentTypeError(f"{host!r} is not loopback: the load client only targets "
                                         f"{', '.join(LOOPBACK_HOSTS)}")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcBackend:
    """`shunter.v1.Generation/Generate` over one channel (made on the running event loop)."""

    def __init__(self, target: str) -> None:
        import grpc

        from shunter.proto import generation_pb2 as pb
        from shunter.proto import generation_pb2_grpc as pb_grpc

        self._grpc, self._pb = grpc, pb
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = pb_grpc.GenerationStub(self.channel)

    def _message(self, r: Outgoing) -> Any:
        pb = self._pb
        slo = pb.Slo(**{k: v for k, v in (("ttft_ms", r.ttft_ms), ("tbt_ms", r.tbt_ms)) if v is not None})
        return pb.GenerateRequest(
            request_id=r.request_id, prompt_token_ids=pb.TokenIds(ids=r.prompt_token_ids),
            sampling=pb.SamplingOptions(max_tokens=r.max_tokens, temperature=0.0, ignore_eos=True),
            priority=PRIORITY_ENUM[r.priority], slo=slo)

    async def stream(self, request: Outgoing) -> AsyncIterator[Chunk]:
        call = self.stub.Generate(self._message(request))
        try:
            async for m in call:
                yield Chunk(list(m.token_ids), m.replica_id, m.finish_reason, m.usage.cached_tokens)
        except self._grpc.aio.AioRpcError as e:
            raise BackendError(e.code().name, e.details() or "") from None
        finally:
            call.cancel()  # a no-op once the stream ended; else (the run was cut) the server aborts the request

    async def close(self) -> None:
        await self.channel.close()


# How the HTTP gateway's statuses read as the gRPC codes the driver records (router/http/errors.py).
HTTP_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 413: "INVALID_ARGUMENT",
              429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}
ERROR_TYPES = {"invalid_request_error": "INVALID_ARGUMENT", "rate_limit_error": "RESOURCE_EXHAUSTED",
               "service_unavailable_error": "UNAVAILABLE"}  # an error event after the 200, by its type


class HttpBackend:
    """The OpenAI `/v1/completions` endpoint (`--http-port`), streamed as server-sent events over
    one HTTP/1.1 connection per request (asyncio streams: nothing to install). It asks for
    `return_token_ids`, so chunks carry tokens as gRPC's do (multi-turn prompts hold the answer),
    and for the usage, whose cached tokens come with the finish. No replica id comes over HTTP."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.host, self.port = host.removeprefix("[").removesuffix("]"), int(port)

    def _request(self, r: Outgoing) -> bytes:
        body: dict[str, Any] = {"prompt": r.prompt_token_ids, "max_tokens": r.max_tokens, "temperature": 0.0,
                                "ignore_eos": True, "priority": r.priority, "stream": True, "return_token_ids": True,
                                "stream_options": {"include_usage": True}}
        slo = {k: v for k, v in (("ttft_ms", r.ttft_ms), ("tbt_ms", r.tbt_ms)) if v is not None}
        if slo:
            body["slo"] = slo
        data = json.dumps(body).encode()
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Accept: text/event-stream\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
        return head.encode() + data

    async def stream(self, request: Outgoing) -> AsyncIterator[Chunk]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(self._request(request))
            status, chunked = await _response_head(reader)
            if status != 200:
                raise _error(status, b"".join([piece async for piece in _body(reader, chunked)]))
            finish = ""
            async for event in _events(_body(reader, chunked)):
                if "error" in event:
                    error = event["error"]
                    raise BackendError(ERROR_TYPES.get(error.get("type"), "INTERNAL"), error.get("message", ""))
                if event["choices"]:
                    choice = event["choices"][0]
                    finish = choice["finish_reason"] or finish
                    yield Chunk(choice.get("token_ids", []))
                elif event.get("usage"):  # the last chunk: the finish goes out with the cached tokens
                    yield Chunk([], finish_reason=finish, cached_tokens=event["usage"]["prompt_tokens_details"][
                        "cached_tokens"])
        finally:
            writer.close()  # a run cut short: the server sees the disconnect and aborts the request

    async def close(self) -> None:
        pass


async def _response_head(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the body is chunked), after reading the status line and the headers."""
    status = int((await reader.readline()).split()[1])
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        chunked |= name.strip().lower() == "transfer-encoding" and "chunked" in value.lower()
    return status, chunked


async def _body(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """The body's bytes as they come: chunked transfer coding undone, else up to the close."""
    if not chunked:
        while piece := await reader.read(65536):
            yield piece
        return
    while size := int((await reader.readline()).split(b";")[0], 16):
        yield await reader.readexactly(size)
        await reader.readexactly(2)  # the chunk's CRLF


async def _events(body: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events' `data:` payloads as JSON, up to `[DONE]`."""
    pending = b""
    async for piece in body:
        pending += piece
        *events, pending = pending.split(b"\n\n")
        for event in events:
            data = event.removeprefix(b"data: ")
            if data == b"[DONE]":
                return
            yield json.loads(data)


def _error(status: int, body: bytes) -> BackendError:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode(errors="replace")[:200]
    return BackendError(HTTP_CODES.get(status, "INTERNAL"), message)
