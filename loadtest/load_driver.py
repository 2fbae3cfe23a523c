"""The load client's loop: send a workload through a `Backend` and record every request.

Open loop (`concurrency=None`): each request is sent at its arrival time, whatever is still in
flight, so the offered rate does not bend to the server (a closed loop would hide queueing).
Closed loop: `concurrency` senders, each sending its next request when its last one ended.
Either way, the turns of one conversation are a chain: a later turn's prompt holds the answers
received so far, so it is sent only after the turn before it ended (and its think time passed);
if a turn fails, the conversation's later turns are not sent.

A run stops by itself when every request ended, at `duration_s`, or when `stop` is set
(Ctrl-C): requests in flight are then cancelled (`error="cancelled"`) and the ones not yet
sent keep `sent_s=None`, so what was measured up to then is still a complete record.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from shunter.loadtest.load_backend import Backend, BackendError, Outgoing
from shunter.loadtest.load_metrics import RequestRecord
from shunter.loadtest.workloads import WorkloadRequest
from shunter.replica.policies.slos import DEFAULT_SLOS


@dataclass
class RunResult:
    records: list[RequestRecord]
    duration_s: float  # the run's start to its last response (or to where it was cut)
    cut: str = ""  # "duration" or "stopped" when the run did not end by itself


def chains(requests: list[WorkloadRequest]) -> list[list[WorkloadRequest]]:
    """Conversations as lists of turns, every other request alone; ordered by first arrival."""
    by_conversation: dict[str, list[WorkloadRequest]] = {}
    out: list[list[WorkloadRequest]] = []
    for r in sorted(requests, key=lambda r: (r.arrival_s, r.turn)):
        if not r.conversation:
            out.append([r])
        elif r.conversation in by_conversation:
            by_conversation[r.conversation].append(r)
        else:
            by_conversation[r.conversation] = [r]
            out.append(by_conversation[r.conversation])
    for turns in by_conversation.values():
        turns.sort(key=lambda r: r.turn)
    return out


class LoadDriver:
    """One run of a workload against a backend."""

    def __init__(self, backend: Backend, requests: list[WorkloadRequest], vocab_size: int,
                 concurrency: int | None = None, default_slo: tuple[float | None, float | None] = (None, None),
                 id_prefix: str = "", on_done: Callable[[RequestRecord], None] | None = None) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.backend, self.vocab_size, self.concurrency = backend, vocab_size, concurrency
        self.default_slo, self.id_prefix, self.on_done = default_slo, id_prefix, on_done
        self.chains = chains(requests)
        self.records = {r.request_id: self._record(r) for chain in self.chains for r in chain}
        self.tasks: set[asyncio.Task] = set()
        self.t0 = 0.0
        self.last_end = 0.0

    def _targets(self, r: WorkloadRequest) -> tuple[float | None, float | None]:
        """What is sent: the request's own targets, else the run's (None: the server's class default)."""
        return (r.ttft_ms if r.ttft_ms is not None else self.default_slo[0],
                r.tbt_ms if r.tbt_ms is not None else self.default_slo[1])

    def _record(self, r: WorkloadRequest) -> RequestRecord:
        ttft, tbt = self._targets(r)
        server = DEFAULT_SLOS[r.priority]
        return RequestRecord(r.request_id, r.priority, r.tenant, r.conversation, r.turn, r.output_len,
                             ttft if ttft is not None else server.ttft_ms, tbt if tbt is not None else server.tbt_ms)

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    async def run(self, duration_s: float | None = None, stop: asyncio.Event | None = None) -> RunResult:
        self.t0 = time.perf_counter()
        main = asyncio.ensure_future(self._closed() if self.concurrency else self._open())
        waits = {main} | ({asyncio.ensure_future(stop.wait())} if stop is not None else set())
        done, _ = await asyncio.wait(waits, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED)
        cut = "" if main in done else ("stopped" if done else "duration")
        for task in waits - {main}:
            task.cancel()
        if cut:
            for task in (main, *self.tasks):
                task.cancel()
            self.last_end = self._now()
        await asyncio.gather(main, *self.tasks, return_exceptions=bool(cut))
        return RunResult(list(self.records.values()), self.last_end, cut)

    async def _open(self) -> None:
        for chain in self.chains:
            await asyncio.sleep(max(0.0, chain[0].arrival_s - self._now()))
            task = asyncio.ensure_future(self._chain(chain, paced=True))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        await asyncio.gather(*self.tasks)

    async def _closed(self) -> None:
        queue = deque(self.chains)

        async def sender() -> None:
            while queue:
                await self._chain(queue.popleft(), paced=False)

        await asyncio.gather(*(sender() for _ in range(self.concurrency or 1)))

    async def _chain(self, chain: list[WorkloadRequest], paced: bool) -> None:
        """Send a conversation's turns in order (or one request); paced: at their arrival and think times."""
        history: list[int] | None = None
        ended: float | None = None
        for r in chain:
            due = self._now()
            if paced:
                due = max(r.arrival_s, ended + r.think_s if ended is not None else 0.0)
                await asyncio.sleep(max(0.0, due - self._now()))
            prompt = r.prompt_tokens(self.vocab_size, history)
            answer = await self._send(r, prompt, due)
            if answer is None:
                return
            history, ended = prompt[r.prefix_len:] + answer, self._now()

    async def _send(self, r: WorkloadRequest, prompt: list[int], due: float) -> list[int] | None:
        """Send one request and fill its record; its answer's tokens, None when it did not finish."""
        rec = self.records[r.request_id]
        rec.due_s, rec.prompt_len = due, len(prompt)
        ttft, tbt = self._targets(r)
        request = Outgoing(self.id_prefix + r.request_id, prompt, r.output_len, r.priority, ttft, tbt)
        answer: list[int] = []
        start = time.perf_counter()
        rec.sent_s = start - self.t0
        last = start
        try:
            async for chunk in self.backend.stream(request):
                now = time.perf_counter()
                for _ in chunk.token_ids:
                    if rec.ttft_s is None:
                        rec.ttft_s = now - start
                    else:
                        rec.itl_s.append(now - last)
                    last = now
                answer += chunk.token_ids
                if chunk.replica_id and (not rec.replicas or rec.replicas[-1] != chunk.replica_id):
                    rec.replicas.append(chunk.replica_id)
                if chunk.finish_reason:
                    rec.finish_reason, rec.cached_tokens = chunk.finish_reason, chunk.cached_tokens
        except BackendError as e:
            rec.error = e.code
        except asyncio.CancelledError:
            rec.error = "cancelled"
            raise
        finally:
            end = time.perf_counter()
            rec.num_tokens = len(answer)
            if not rec.error:
                rec.e2e_s = end - start
            self.last_end = max(self.last_end, end - self.t0)
            if self.on_done is not None:
                self.on_done(rec)
        return answer if rec.finished else None
