"""The gRPC frontend (grpc.aio): validate, tokenize, route, detokenize, stream.

Detokenization happens here, per request, incrementally: text is released only when it no
longer ends inside a multi-byte character, and stop strings are applied to the text the client
sees. Because the frontend owns the text, a request that changed replica (migration, failover)
still yields one continuous text. Reflection and `grpc.health.v1.Health` are served too. With
metrics on, each stream's timings are observed here, as the client receives its chunks
(`metrics/requests.py`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, AsyncGenerator, AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shunter.errors import InvalidArgument, Overloaded, ReplicaUnavailable, RequestNotFound, Superseded
from shunter.logprobs import TokenLogprobs
from shunter.proto import generation_pb2 as pb
from shunter.proto import generation_pb2_grpc as pb_grpc
from shunter.replica.detokenizer import IncrementalDetokenizer, detokenize
from shunter.router.security import DecodeGuard
from shunter.router.grpc.request import MAX_REQUEST_BYTES, prepare
from shunter.router.core import Stream, resume_stream, stopped
from shunter.router.core import Router
from shunter.router.security import Security

if TYPE_CHECKING:
    from shunter.router.metrics import StreamMetrics
    from shunter.router.metrics import FrontendMetrics

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["Generation"].full_name


class GenerationServicer(pb_grpc.GenerationServicer):
    def __init__(self, router: Router, model: str = "", metrics: FrontendMetrics | None = None) -> None:
        self.router, self.model, self.metrics = router, model, metrics

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateResponse]:
        start = time.perf_counter()
        timing = None
        try:
            stream = await self._open(request)
            if self.metrics:
                timing = self.metrics.requests.stream(start, stream.num_prompt_tokens)
            async with aclosing(self._chunks(stream, timing)) as chunks:  # leaving early aborts a running request
                async for chunk in chunks:
                    yield chunk
        except RequestNotFound as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except Superseded as e:
            await context.abort(grpc.StatusCode.ABORTED, str(e))
        except Overloaded as e:
            hint = () if e.retry_after_ms is None else (("retry-after-ms", str(e.retry_after_ms)),)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), trailing_metadata=hint)
        except ReplicaUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except (asyncio.CancelledError, GeneratorExit):  # the client left
            if timing is not None and not timing.done:
                timing.finished("abort")
            raise

    async def _open(self, request: pb.GenerateRequest) -> Stream:
        """A new request's stream, or (with `resume_from`) one picked up again (`resume.py`)."""
        if request.HasField("resume_from"):
            return await resume_stream(self.router, request.request_id, request.resume_from)
        try:
            p = prepare(request, self.router.info)
        except ValueError:
            self.router.counters.reject("invalid")
            raise
        return Stream(p.request_id, len(p.prompt_token_ids), p.params, 0, 0, [],
                      self.router.generate(p.request_id, p.prompt_token_ids, p.params))

    async def _chunks(self, s: Stream, timing: StreamMetrics | None = None) -> AsyncGenerator[pb.GenerateResponse, None]:
        """Detokenize and number the stream's tokens; a resumed stream sends only the tokens past
        `resume_from` (its detokenizer is fed those before them, so the text continues exactly)."""
        tokenizer = self.router.info.tokenizer
        detok = IncrementalDetokenizer(tokenizer, list(s.params.stop)) if tokenizer is not None else None
        for token in s.received if detok is not None else ():
            detok.add(token)
        position = s.start  # of the next token in the request's output
        async with aclosing(s.deltas) as deltas:
            async for delta in deltas:
                skip = min(len(delta.token_ids), max(0, s.resume_from - position))  # regenerated; the client has them
                for token in delta.token_ids[:skip] if detok is not None else ():
                    detok.add(token)
                tokens, text, finish = detokenize(detok, delta.token_ids[skip:], delta.finish_reason)
                logprobs = delta.logprobs[skip: skip + len(tokens)] if delta.logprobs is not None else ()
                position += skip + len(tokens)
                if finish is not None and position < s.resume_from:
                    raise InvalidArgument(f"resume_from: {s.resume_from} is beyond the {position} tokens "
                                          f"request {s.request_id!r} made")
                if not tokens and finish is None:
                    continue
                chunk = pb.GenerateResponse(request_id=s.request_id, token_ids=tokens, text=text,
                                            replica_id=delta.replica_id, logprobs=map(_token_logprob, logprobs))
                if delta.prompt_logprobs is not None and not skip:
                    chunk.prompt_logprobs.extend(_token_logprob(p) for p in delta.prompt_logprobs[1:])
                if finish is not None:
                    if finish != delta.finish_reason:  # cut here at a stop string
                        stopped(self.router, s.request_id, position)
                    chunk.finish_reason = finish
                    chunk.usage.CopyFrom(pb.Usage(prompt_tokens=s.num_prompt_tokens, completion_tokens=position,
                                                  cached_tokens=delta.num_cached_tokens))
                if timing is not None:
                    if tokens:
                        timing.sent(len(tokens))
                    if finish is not None:
                        timing.finished(finish)
                yield chunk
                if finish is not None:
                    return

    async def ClusterStatus(self, request: pb.ClusterStatusRequest, context: grpc.aio.ServicerContext) -> pb.ClusterStatusResponse:
        out = pb.ClusterStatusResponse(routing=self.router.policy.name, model=self.model,
                                       size_threshold_blocks=self.router.config.size_threshold_blocks or 0,
                                       metrics_port=self.metrics.page.port if self.metrics else 0,
                                       prefill_threshold_tokens=self.router.config.prefill_threshold_tokens or 0)
        moving = list(self.router.migrations_in_flight.values())
        for rid, slot in self.router.slots.items():
            r = slot.report
            out.replicas.append(pb.ReplicaStatus(
                replica_id=rid, node=r.node, healthy=slot.healthy, num_running=r.num_running, num_waiting=r.num_waiting,
                num_swapped=r.num_swapped, kv_blocks_total=r.kv_blocks_total, kv_blocks_in_use=r.kv_blocks_in_use,
                kv_blocks_cached=r.kv_blocks_cached, prefix_hit_rate=r.prefix_hit_rate, load_blocks=r.load,
                large_cache=r.large_cache, metrics_port=slot.info.metrics_port if slot.info else 0,
                migrating_out=sum(src == rid for src, _ in moving), migrating_in=sum(dst == rid for _, dst in moving),
                step_tile_boundaries=r.step_tile_boundaries, spec_acceptance_rate=r.spec_acceptance_rate,
                kv_cpu_blocks_total=r.cpu_blocks_total, kv_cpu_blocks_cached=r.cpu_blocks_cached,
                prefix_hit_rate_cpu=r.cpu_hit_rate, prefill_only=r.prefill_only))
        c = self.router.counters
        out.counters.CopyFrom(pb.RouterCounters(routed=c.routed, migrated=c.migrated, failed_over=c.failed_over,
                                                rejected=c.rejected, in_flight=len(self.router.journal),
                                                queued=self.router.admission.queued, migrating=len(moving),
                                                migrations_aborted=sum(c.migrations_aborted_by.values()),
                                                migrations_refused=sum(c.migrations_refused_by.values()),
                                                handed_off=c.handed_off))
        return out


def _token_logprob(p: TokenLogprobs) -> pb.TokenLogprob:
    return pb.TokenLogprob(token_id=p.token_id, logprob=p.logprob, rank=p.rank,
                           top=[pb.TopLogprob(token_id=t, logprob=lp) for t, lp in zip(p.top_ids, p.top_logprobs)])


class Frontend:
    """The server: Generation + Health + reflection on one port (and, with `metrics`, the
    request timings of every stream for its Prometheus page)."""

    def __init__(self, router: Router, host: str = "127.0.0.1", port: int = 50051, model: str = "",
                 metrics: FrontendMetrics | None = None, security: Security | None = None) -> None:
        self.router = router
        security = security or Security()
        self.server = grpc.aio.server(interceptors=[*security.interceptors(), DecodeGuard()], options=[
            ("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", MAX_REQUEST_BYTES)])
        pb_grpc.add_GenerationServicer_to_server(GenerationServicer(router, model, metrics), self.server)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        address = f"{host}:{port}"
        self.port = (self.server.add_secure_port(address, security.credentials) if security.credentials
                     else self.server.add_insecure_port(address))
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
        ones; True when all finished. Streams still running at the deadline are ended there with
        finish_reason "shutdown" (their replicas abort them), so the grace period that follows only
        flushes last chunks: nothing generates in it that the verdict does not see."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        drained = await self.router.drain(timeout_s)
        await self.server.stop(grace=1.0)
        return drained
