"""The load client's transport seam: what it sends, what comes back, and the gRPC backend.

The driver (`load_driver.py`) knows only `Backend.stream`: one request in, its chunks out, a
`BackendError` with the status code when the server refuses or fails it. The gRPC backend is
the one there is; an OpenAI-compatible HTTP backend plugs in the same way. gRPC is imported
when a backend is made, so `shunter bench serve --help` stays instant.
"""
from __future__ import annotations

import argparse
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
