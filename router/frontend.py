"""The gRPC frontend (grpc.aio): validate, tokenize, route, detokenize, stream.

Detokenization happens here, per request, incrementally: text is released only when it no
longer ends inside a multi-byte character, and stop strings are applied to the text the client
sees. Because the frontend owns the text, a request that changed replica (migration, failover)
still yields one continuous text. Reflection and `grpc.health.v1.Health` are served too.
"""
from __future__ import annotations

import logging
from typing import Any, AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shunter.errors import Overloaded, ReplicaUnavailable
from shunter.proto import generation_pb2 as pb
from shunter.proto import generation_pb2_grpc as pb_grpc
from shunter.replica.detokenizer import IncrementalDetokenizer
from shunter.router.api_keys import ApiKeys
from shunter.router.grpc_auth import ApiKeyInterceptor
from shunter.router.grpc_request import prepare
from shunter.router.router import Router
from shunter.router.text_stream import detokenize

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["Generation"].full_name


class GenerationServicer(pb_grpc.GenerationServicer):
    def __init__(self, router: Router, model: str = "") -> None:
        self.router, self.model = router, model

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateResponse]:
        info = self.router.info
        try:
            prepared = prepare(request, info)
        except ValueError as e:
            self.router.counters.rejected += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        rid = prepared.request_id
        detok = IncrementalDetokenizer(info.tokenizer, prepared.stop) if info.tokenizer is not None else None
        completion = 0
        try:
            async for delta in self.router.generate(rid, prepared.prompt_token_ids, prepared.params):
                tokens, text, finish = detokenize(detok, delta.token_ids, delta.finish_reason)
                completion += len(tokens)
                chunk = pb.GenerateResponse(request_id=rid, token_ids=tokens, text=text, replica_id=delta.replica_id)
                if finish is not None:
                    chunk.finish_reason = finish
                    chunk.usage.CopyFrom(pb.Usage(prompt_tokens=len(prepared.prompt_token_ids),
                                                  completion_tokens=completion, cached_tokens=delta.num_cached_tokens))
                yield chunk
                if finish is not None:
                    return  # leaving the router's stream aborts the request if it is still running
        except Overloaded as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except ReplicaUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    async def ClusterStatus(self, request: pb.ClusterStatusRequest, context: grpc.aio.ServicerContext) -> pb.ClusterStatusResponse:
        out = pb.ClusterStatusResponse(routing=self.router.policy.name, model=self.model,
                                       size_threshold_blocks=self.router.config.size_threshold_blocks or 0)
        for rid, slot in self.router.slots.items():
            r = slot.report
            out.replicas.append(pb.ReplicaStatus(
                replica_id=rid, node=r.node, healthy=slot.healthy, num_running=r.num_running, num_waiting=r.num_waiting,
                num_swapped=r.num_swapped, kv_blocks_total=r.kv_blocks_total, kv_blocks_in_use=r.kv_blocks_in_use,
                kv_blocks_cached=r.kv_blocks_cached, prefix_hit_rate=r.prefix_hit_rate, load_blocks=r.load,
                large_cache=r.large_cache))
        c = self.router.counters
        out.counters.CopyFrom(pb.RouterCounters(routed=c.routed, migrated=c.migrated, failed_over=c.failed_over,
                                                rejected=c.rejected, in_flight=len(self.router.journal)))
        return out


class Frontend:
    """The server: Generation + Health + reflection on one port; with `api_keys`, all but Health need one."""

    def __init__(self, router: Router, host: str = "127.0.0.1", port: int = 50051, model: str = "",
                 api_keys: ApiKeys | None = None) -> None:
        self.router = router
        interceptors = [ApiKeyInterceptor(api_keys)] if api_keys is not None else None
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], interceptors=interceptors)
        pb_grpc.add_GenerationServicer_to_server(GenerationServicer(router, model), self.server)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}")

    async def _set_health(self, status: Any) -> None:
        for name in ("", SERVICE):
            result = self.health.set(name, status)
            if hasattr(result, "__await__"):
                await result

    async def start(self) -> None:
        await self.server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def drain_and_stop(self, timeout_s: float = 30.0) -> bool:
        """Stop taking requests (health NOT_SERVING, new Generate UNAVAILABLE), finish the running
        ones; True when all finished. Streams still running at the deadline are cut there: a grace
        period after it would be a second drain the verdict does not see (a stream finishing in it
        was reported as timed out)."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        drained = await self.router.drain(timeout_s)
        await self.server.stop(grace=1.0 if drained else None)  # drained: a moment to flush the last chunks
        return drained
