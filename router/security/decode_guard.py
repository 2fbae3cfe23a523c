"""Bytes that are no valid protobuf get INVALID_ARGUMENT, not UNKNOWN and a logged traceback.

grpc.aio deserializes a request before any servicer code runs, and a `DecodeError` there ends
the call as UNKNOWN with an ERROR log of the stack (found by fuzzing). This interceptor wraps
each unary-request handler's deserializer so a corrupt message becomes a value the handler
refuses cleanly. Streaming requests (reflection) are left as they are.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class Malformed:
    error: str


def _safe(deserialize: Callable[[bytes], object] | None) -> Callable[[bytes], object]:
    def parse(data: bytes) -> object:
        try:
            return deserialize(data) if deserialize is not None else data
        except DecodeError as e:
            return Malformed(str(e))

    return parse


async def _refuse(request: Malformed, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid protobuf message ({request.error})")


class DecodeGuard(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        codec = {"request_deserializer": _safe(handler.request_deserializer),
                 "response_serializer": handler.response_serializer}
        if handler.response_streaming:
            stream = handler.unary_stream

            async def guarded_stream(request, context):
                if isinstance(request, Malformed):
                    await _refuse(request, context)
                async for item in stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(guarded_stream, **codec)
        unary = handler.unary_unary

        async def guarded(request, context):
            if isinstance(request, Malformed):
                await _refuse(request, context)
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(guarded, **codec)
