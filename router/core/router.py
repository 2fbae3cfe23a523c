"""The Router: routes requests to replicas, streams their tokens back, migrates and fails over.

It keeps one long-poll task per replica (tokens, load and cache events arrive together, once per
engine step at most), a `RoutingPolicy` that places new requests, a `Rebalancer` that moves
running ones, and the journal that lets a request change replica without the client seeing a
gap or a duplicate.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Sequence

from shunter.clock import Clock, MonotonicClock
from shunter.errors import Overloaded, ReplicaUnavailable
from shunter.replica.replica_core import PollResult, ReplicaInfo, TokenDelta
from shunter.router.core import migration
from shunter.router.core.admission import Admission
from shunter.router.core.config import DRAIN_FINISH, RouterConfig
from shunter.router.core.counters import Counters
from shunter.router.core.engine_totals import EngineTotals
from shunter.router.core.handoff import Handoff
from shunter.router.core.migration import MigrationRecord
from shunter.router.routing import LoadIndex, LoadReport, PrefixIndex, Rebalancer, RequestLoad, RoutingRequest
from shunter.router.routing import apply_stats, request_load, reserve, routing_policy, routing_request
from shunter.router.core.replica_client import ReplicaClient, ReplicaDead
from shunter.router.core.state_store import Delta, JournalEntry, MemoryStateStore, StateStore, resubmitted
from shunter.sampling_params import SamplingParams

log = logging.getLogger(__name__)
MIGRATION_LOG = 1024  # migrations kept in Router.migration_log


@dataclass
class ReplicaSlot:
    client: ReplicaClient
    report: LoadReport
    info: ReplicaInfo | None = None
    healthy: bool = True
    task: asyncio.Task | None = None
    totals: EngineTotals = field(default_factory=EngineTotals)  # its engine's counts, across its restarts
    published: int = -1  # of the stats last applied (`PollResult.published`)


class Router:
    def __init__(self, clients: Sequence[ReplicaClient], config: RouterConfig | None = None,
                 clock: Clock | None = None, state: StateStore | None = None) -> None:
        self.config = config or RouterConfig()
        self.clock = clock or MonotonicClock()
        self.index = PrefixIndex()
        threshold = self.config.size_threshold_blocks
        self.policy = routing_policy(self.config.routing, self.index, threshold, self.config.routing_settings,
                                     self.config.prefill_threshold_tokens)
        self.handoff = Handoff(self, self.policy) if self.config.prefill_threshold_tokens is not None else None
        self.rebalancer = Rebalancer(self.clock, size_threshold_blocks=threshold, **self.config.rebalancer_settings)
        self.slots = {c.replica_id: ReplicaSlot(c, LoadReport(c.replica_id)) for c in clients}
        self.loads = LoadIndex(s.report for s in self.slots.values())  # told of every change to a report
        self.journal: StateStore = state if state is not None else MemoryStateStore()
        self.counters = Counters()
        self.admission = Admission(self.config.max_in_flight, self.config.max_queued)
        self.draining = False
        self.cut_at_drain = 0  # requests drain() had to end (running or queued) at its deadline
        self._stopping = False
        self._tasks: list[asyncio.Task] = []  # long-lived loops, cancelled by stop()
        self._background: set[asyncio.Task] = set()  # one-off aborts and migrations
        self.migrations_in_flight: dict[str, tuple[str, str]] = {}  # request id -> (source, target)
        self.migration_log: deque[MigrationRecord] = deque(maxlen=MIGRATION_LOG)  # the latest that committed

    # ---- life --------------------------------------------------------------------------------
    async def start(self) -> None:
        infos = await asyncio.gather(*(s.client.info() for s in self.slots.values()))
        first = await asyncio.gather(*(s.client.poll(0.0) for s in self.slots.values()))
        for slot, info, result in zip(self.slots.values(), infos, first):
            slot.info = info
            slot.report.node, slot.report.large_cache = info.node, info.large_cache
            slot.report.prefill_only = info.prefill_only
            self.loads.put(slot.report)  # into its pool (prefill-only replicas are one apart)
            self._apply(slot, result)
            slot.task = asyncio.create_task(self._poll_loop(slot))
            self._tasks.append(slot.task)
        if self.config.rebalance:
            self._tasks.append(asyncio.create_task(self._rebalance_loop()))
        await self.journal.start(self)

    @property
    def info(self) -> ReplicaInfo:
        return next(s.info for s in self.slots.values() if s.info is not None)

    async def drain(self, timeout_s: float = 30.0) -> bool:
        """Refuse new requests; wait for the in-flight ones. True when all finished in time; else
        the rest are ended there (`DRAIN_FINISH`) and `cut_at_drain` says how many."""
        self.draining = True
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (len(self.journal) or self.admission.queued) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        self.cut_at_drain = self.admission.close(ReplicaUnavailable("the server shut down before this request started"))
        for entry in list(self.journal.entries.values()):
            if not entry.finished:
                self.cut_at_drain += 1
                owner = self.slots.get(entry.replica_id or "")
                if owner is not None and owner.healthy:
                    self._spawn(self._quiet_abort(owner, entry.request_id), f"abort {entry.request_id}")
                self._emit(entry, [], DRAIN_FINISH, entry.replica_id or "")
        return self.cut_at_drain == 0

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        await self.journal.stop()

    def _spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        """Run a one-off task in the background; keep a reference (the loop holds only weak
        ones) and log its failure instead of losing it."""
        task = asyncio.create_task(coro, name=what)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    # ---- requests ----------------------------------------------------------------------------
    async def generate(self, request_id: str, prompt: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        """Stream one request's tokens; the last Delta has `finish_reason`. Leaving early aborts it."""
        taken_at = await self.admit()
        entry = JournalEntry(request_id, list(prompt), params)
        try:
            self.journal.add(entry)
        except ValueError:  # its request_id is in flight already
            self.admission.release(taken_at)
            self.counters.reject("invalid")
            raise
        deltas = self.stream(entry, lambda: self._place_new(entry, params))
        try:
            async for delta in deltas:
                yield delta
        finally:
            await deltas.aclose()
            self.admission.release(taken_at)

    async def admit(self) -> float:
        """Wait for an admission slot (`admission.py`); the time it was taken, for `release`.
        Raises when draining, or when all slots and the queue are taken."""
        if self.draining:
            self.counters.reject("draining")
            raise ReplicaUnavailable("the server is draining")
        try:
            return await self.admission.acquire()
        except Overloaded:
            self.counters.reject("max_in_flight")
            raise

    async def stream(self, entry: JournalEntry, start: Callable[[], Awaitable[None]] | None = None
                     ) -> AsyncGenerator[Delta, None]:
        """Hand out a journaled request's deltas (after awaiting `start()`, its placement) until it
        finishes. Leaving early aborts it, unless a resumed stream took it over meanwhile (then
        that one holds it, and this queue is no longer the entry's)."""
        queue = entry.queue
        try:
            if start is not None:
                await start()
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if entry.queue is queue:
                if not entry.finished:
                    entry.finished = True
                    owner = self.slots.get(entry.replica_id or "")
                    if owner is not None and owner.healthy:
                        self._spawn(self._quiet_abort(owner, entry.request_id), f"abort {entry.request_id}")
                self.journal.remove(entry.request_id)
                if self.handoff is not None:
                    self.handoff.forget(entry.request_id)

    async def _quiet_abort(self, slot: ReplicaSlot, request_id: str) -> None:
        try:
            await slot.client.abort(request_id)
        except Exception:  # the replica is gone: nothing to abort
            pass

    async def _place_new(self, entry: JournalEntry, params: SamplingParams) -> None:
        """A new request's placement: with no healthy replica it is refused, and counted so."""
        try:
            await self._place(entry, entry.prompt_token_ids, params)
        except ReplicaUnavailable:
            self.counters.reject("no_replica")
            raise

    def _routing_request(self, request_id: str, prompt: list[int], params: SamplingParams) -> RoutingRequest:
        return routing_request(request_id, prompt, params, self.info.limits.block_size, self.policy.needs_prefix)

    async def _place(self, entry: JournalEntry, prompt: list[int], params: SamplingParams) -> None:
        """Pick a replica and submit; a replica found dead is skipped. ValueError passes through."""
        routing = self._routing_request(entry.request_id, prompt, params)
        for _ in range(len(self.slots)):
            replica_id = self.policy.choose(self.loads, routing)
            slot = self.slots[replica_id]
            entry.replica_id, entry.epoch = replica_id, entry.epoch + 1
            reserve(slot.report, routing)
            self.loads.update(slot.report)
            try:
                await slot.client.submit(entry.request_id, prompt, params)
            except ReplicaDead:
                self._mark_down(slot)
                continue
            except BaseException:
                entry.replica_id = None
                raise
            self.counters.routed += 1
            self.counters.routed_to[replica_id] = self.counters.routed_to.get(replica_id, 0) + 1
            self.journal.placed(entry, routing.expected_blocks)
            if self.handoff is not None and slot.report.prefill_only:
                self.handoff.placed(entry)
            return
        raise ReplicaUnavailable("no healthy replica took the request")

    # ---- what replicas send back -------------------------------------------------------------
    async def _poll_loop(self, slot: ReplicaSlot) -> None:
        while not self._stopping:
            try:
                result = await slot.client.poll(self.config.poll_wait_s)
            except ReplicaDead:
                await self._on_death(slot)
                await self._rejoin(slot)
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("poll of replica %s failed", slot.client.replica_id)
                await asyncio.sleep(0.1)
                continue
            self._apply(slot, result)
            if result.deltas:
                # Let the streams just fed send their tokens before this loop pays for the next
                # poll call (issuing a Ray call costs a few hundred µs of this thread).
                await asyncio.sleep(0)

    def _apply(self, slot: ReplicaSlot, result: PollResult) -> None:
        if not slot.healthy:
            return
        fresh = result.published != slot.published  # a new report: what was sent before it is counted in it
        if fresh:
            slot.published = result.published
            apply_stats(slot.report, result.stats)
        slot.totals.update(result.epoch, result.stats)
        if result.events:
            self.index.apply(slot.client.replica_id, result.events)
        self.journal.reported(slot.report, result, fresh)
        self.loads.update(slot.report)
        for delta in result.deltas:
            self._deliver(slot.client.replica_id, delta)

    def _deliver(self, replica_id: str, d: TokenDelta) -> None:
        """Accept tokens only from the owner and only past what was already sent (by position)."""
        entry = self.journal.get(d.request_id)
        if entry is None or entry.finished or entry.replica_id != replica_id:
            return
        if d.error is not None:  # the replica refused it (submit does not wait to hear so)
            self.counters.reject("invalid" if d.invalid else "replica_refused")
            entry.finished = True
            entry.queue.put_nowait(ValueError(d.error) if d.invalid else ReplicaUnavailable(d.error))
            return
        if entry.offset == 0 and d.num_cached_tokens and not entry.num_cached_tokens:
            entry.num_cached_tokens = d.num_cached_tokens
        fresh = entry.offset + d.num_output_tokens - len(entry.sent)
        if fresh > len(d.new_token_ids):
            log.error("request %s: %d tokens missing from replica %s", d.request_id, fresh - len(d.new_token_ids), replica_id)
        new = d.new_token_ids[len(d.new_token_ids) - fresh:] if fresh > 0 else []
        self._emit(entry, new, d.finish_reason, replica_id, d.new_logprobs, d.prompt_logprobs)
        if new and self.handoff is not None and self.slots[replica_id].report.prefill_only:
            self.handoff.after_tokens(entry)

    def _emit(self, entry: JournalEntry, new: list[int], finish: str | None, replica_id: str,
              logprobs: list | None = None, prompt_logprobs: list | None = None) -> None:
        """Hand new tokens to the stream; `logprobs` ends with theirs (when asked), and the
        prompt's come with the request's first token."""
        if logprobs is not None:  # the last len(new) of what came: the others were sent before
            logprobs = logprobs[len(logprobs) - len(new):] if new else []
            if entry.logprobs is not None:
                entry.logprobs += logprobs
        if prompt_logprobs is not None and not entry.sent and new:
            entry.prompt_logprobs = prompt_logprobs
        else:
            prompt_logprobs = None
        entry.sent.extend(new)
        if new:
            self.journal.sent(entry, new)
        if finish is not None:
            entry.finished, entry.finish_reason = True, finish
        if new or finish is not None:
            entry.queue.put_nowait(Delta(list(new), finish, entry.num_cached_tokens, replica_id, logprobs,
                                         prompt_logprobs))

    # ---- failover ------------------------------------------------------------------------------
    def _mark_down(self, slot: ReplicaSlot) -> bool:
        if not slot.healthy:
            return False
        slot.healthy = slot.report.healthy = False
        self.loads.update(slot.report)
        self.index.forget(slot.client.replica_id)
        log.warning("replica %s is down", slot.client.replica_id)
        return True

    async def _on_death(self, slot: ReplicaSlot) -> None:
        self._mark_down(slot)
        for entry in self.journal.owned_by(slot.client.replica_id):
            await self._failover(entry)

    async def _failover(self, entry: JournalEntry) -> None:
        """Resubmit elsewhere as prompt + tokens already sent, for the tokens still owed."""
        self.counters.failed_over += 1
        remaining = entry.params.max_tokens - len(entry.sent)
        if remaining <= 0:
            self._emit(entry, [], "length", entry.replica_id or "")
            return
        entry.replica_id, entry.offset = None, len(entry.sent)
        params = resubmitted(entry.params, len(entry.sent))
        try:
            await self._place(entry, entry.prompt_token_ids + entry.sent, params)
        except Exception as e:
            entry.finished = True
            entry.queue.put_nowait(e if isinstance(e, ReplicaUnavailable) else ReplicaUnavailable(str(e)))

    async def _rejoin(self, slot: ReplicaSlot) -> None:
        """Wait for the replica to come back (its supervisor restarts it), then route to it again."""
        delay, loop = 0.1, asyncio.get_running_loop()
        deadline = loop.time() + self.config.rejoin_timeout_s
        while not self._stopping:
            try:
                slot.info = await asyncio.wait_for(slot.client.info(), max(1.0, deadline - loop.time()))
                break
            except (ReplicaDead, asyncio.TimeoutError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        if self._stopping:
            return
        slot.report = LoadReport(slot.client.replica_id, node=slot.info.node, large_cache=slot.info.large_cache,
                                 prefill_only=slot.info.prefill_only)
        self.loads.put(slot.report)
        slot.healthy = True
        self.counters.rejoined += 1
        log.warning("replica %s rejoined", slot.client.replica_id)

    # ---- migration -----------------------------------------------------------------------------
    async def migrate(self, request_id: str, target: str, with_kv: bool = True, until_first_token: bool = False) -> bool:
        """Move a running request to `target` with its KV, live or stop-and-copy (`config.migration`;
        without KV the target recomputes; streamed from its prefill on with `until_first_token`);
        the stream continues from where it was (`migration.py`)."""
        return await migration.migrate(self, request_id, target, with_kv, until_first_token)

    async def _rebalance_loop(self) -> None:
        """Every round, plan over what the journal says this frontend may plan over (with several
        frontends, only the leader plans, over everyone's requests); move our own requests, and
        ask the other frontends to move theirs."""
        while not self._stopping:
            await asyncio.sleep(0.05)
            if self.rebalancer.due():
                try:
                    await self._rebalance_round()
                except asyncio.CancelledError:
                    raise
                except Exception:  # one bad round must not end rebalancing for good
                    log.exception("rebalancing round failed")

    async def _rebalance_round(self) -> None:
        view = await self.journal.rebalance_view(self)
        if view is None:
            return
        reports, in_flight = view
        owners = {q.request_id: q.owner for r in reports for q in r.requests}
        for move in self.rebalancer.plan(reports, in_flight):
            if owners.get(move.request_id):
                self.journal.ask_to_migrate(owners[move.request_id], move.request_id, move.source, move.target)
            else:
                self._spawn(self.migrate(move.request_id, move.target), f"migrate {move.request_id}")

    def reports(self, with_requests: bool = False) -> list[LoadReport]:
        """Each replica's report; `with_requests`: with its running requests' loads (those
        migrating off it too, which the rebalancer counts as gone: `migrations_in_flight`)."""
        if not with_requests:
            return [s.report for s in self.slots.values()]
        bs = self.info.limits.block_size
        per: dict[str, list[RequestLoad]] = {rid: [] for rid in self.slots}
        for e in self.journal.entries.values():
            if e.replica_id in per and not e.finished:
                per[e.replica_id].append(request_load(e.request_id, len(e.prompt_token_ids), e.params, len(e.sent), bs))
        return [dataclasses.replace(s.report, requests=per[rid]) for rid, s in self.slots.items()]
