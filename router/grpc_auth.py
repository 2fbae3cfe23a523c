"""API keys on the gRPC server: a call without `authorization: Bearer <key>` ends UNAUTHENTICATED.

The health service stays open (load balancers and orchestrators probe it without a key). A
refused call is answered by a handler of the same shape as the one it asked for (unary or
streaming), so the client sees the status, not a protocol error; the method itself never runs.
"""
from __future__ import annotations

from typing import Awaitable, Callable

import grpc

from shunter.router.api_keys import ApiKeys

Handler = grpc.RpcMethodHandler
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
REFUSED = "authorization: send 'Bearer <key>' with one of the server's API keys"
_HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


async def _refuse(request, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
                                details: grpc.HandlerCallDetails) -> Handler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        authorization = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        if self.keys.allows(authorization if isinstance(authorization, str) else None):
            return handler
        make = _HANDLERS[(handler.request_streaming, handler.response_streaming)]
        return make(_refuse, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
