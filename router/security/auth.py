"""API keys: load them, check an `authorization: Bearer <key>` header, guard a gRPC server.

Keys come from a file (one a line; blank lines and `#` comments skipped) and/or the environment
variable SHUNTER_API_KEYS (comma-separated). A presented key is compared with every configured
key by `hmac.compare_digest`, all of them every time, so neither the answer's timing nor its
content tells how much of a key was right. `check_bearer` is transport-free: the HTTP gateway
calls the same function with its own header. Keys are never logged.
"""
from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import grpc

ENV_KEYS = "SHUNTER_API_KEYS"
OPEN_SERVICES = ("/grpc.health.v1.Health/",)  # load balancers and probes hold no key
SCHEME = "bearer"


def load_api_keys(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> tuple[bytes, ...]:
    """Every key from the file and the environment; () when neither is set (keys are off)."""
    environ = os.environ if environ is None else environ
    keys = [k.strip() for k in environ.get(ENV_KEYS, "").split(",")]
    if path is not None:
        for line in Path(path).read_text().splitlines():
            keys.append(line.split("#", 1)[0].strip())
    found = tuple(dict.fromkeys(k.encode() for k in keys if k))
    if path is not None and not found:
        raise ValueError(f"{path}: holds no API key")
    return found


def check_bearer(header: str | bytes | None, keys: tuple[bytes, ...]) -> bool:
    """True when `header` is `Bearer <key>` with one of `keys` (the scheme's case does not matter)."""
    if not header or not keys:
        return False
    if isinstance(header, str):
        header = header.encode("utf-8", "surrogateescape")
    scheme, _, presented = header.strip().partition(b" ")
    if scheme.lower() != SCHEME.encode():
        return False
    presented = presented.strip()
    ok = False
    for key in keys:  # no early exit: every key is compared, whichever matches
        ok |= hmac.compare_digest(presented, key)
    return ok


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuse every call without a valid key with UNAUTHENTICATED, except the health service."""

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("ApiKeyInterceptor needs at least one key")
        self.keys = keys

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        header = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        if check_bearer(header, self.keys):
            return handler
        return _refusal(handler)


async def _refuse(request_or_iterator, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                        "a valid API key is required: send metadata 'authorization: Bearer <key>'")


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape (so the request still deserializes) that only refuses."""
    codec = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_refuse, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_refuse, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_refuse, **codec)
    return grpc.unary_unary_rpc_method_handler(_refuse, **codec)
