"""P/D disaggregation's second half: a request that started on a prefill-only replica moves, once
it has its first token, to a decode replica with its KV.

The KV streams while the prefill runs: once the request's prefill has begun (a probe that copies
nothing, every `STREAM_POLL_S` and backing off to `PROBE_MAX_S` while it waits in the prefill
replica's queue, so a queued request holds no decode replica's blocks), a streamed migration
starts (`Router.migrate(..., until_first_token=True)`): each block is copied to the decode
replica as the prefill completes it, and the commit, right after the first token, carries only
the last chunk's blocks. If that cannot happen (it aborted), the next token starts a live
migration instead (`after_tokens`), during which the prefill replica keeps decoding it.

Which decode replica: the routing policy's choice over the decode pool for the prompt and the
tokens made so far (`Disaggregated.decode_target`), counted on that replica's report at once
(as a placement is) so that a burst of hand-offs between two reports does not all pick the same
one. A hand-off that is refused or aborts (the target out of blocks or dead) leaves the request
decoding where it is, and the next of its tokens tries again after `RETRY_S`. With no healthy
decode replica it stays where it is. Failover covers both halves: a request whose prefill
replica dies is placed again (long, so on another prefill replica, then handed off); one whose
decode replica dies is placed again as prompt + tokens sent, which is long, so the same way.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from shunter.router.core.migration import STREAM_POLL_S
from shunter.router.core.replica_client import ReplicaDead
from shunter.router.routing import Disaggregated, reserve, routing_request

if TYPE_CHECKING:
    from shunter.router.core.router import Router
    from shunter.router.core.state_store import JournalEntry

RETRY_S = 0.1  # after a hand-off that did not happen, wait this long before the next try
PROBE_MAX_S = 0.2  # a request queued on a prefill replica is asked after at most this long
NO_BLOCK = 1 << 30  # a probe asks for blocks from past the end: it copies none, and says how many are computed


class Handoff:
    def __init__(self, router: Router, policy: Disaggregated) -> None:
        self.router, self.policy = router, policy
        self.not_before: dict[str, float] = {}  # request id -> when it may try again
        self.streaming: dict[str, int] = {}  # request id -> the placement (epoch) whose streamed hand-off is pending

    def placed(self, entry: JournalEntry) -> None:
        """`entry` was just placed on a prefill-only replica: stream its KV once its prefill begins."""
        self.streaming[entry.request_id] = entry.epoch
        self.router._spawn(self._stream(entry, entry.replica_id, entry.epoch), f"stream {entry.request_id}")

    async def _stream(self, entry: JournalEntry, source: str, epoch: int) -> None:
        try:
            await self._probe_then_stream(entry, source, epoch)
        finally:
            if self.streaming.get(entry.request_id) == epoch:  # not a later placement's
                del self.streaming[entry.request_id]

    async def _probe_then_stream(self, entry: JournalEntry, source: str, epoch: int) -> None:
        delay, client = STREAM_POLL_S, self.router.slots[source].client
        while entry.epoch == epoch and not entry.finished and not entry.migrating:
            try:
                probe = await client.export_blocks(entry.request_id, NO_BLOCK, 1)
            except ReplicaDead:  # its poll fails it over
                return
            # None: not there yet (a Ray replica may run the probe before the submit), or gone (then
            # the poll ends or moves it, and the loop with it).
            if probe is not None and probe.computed_blocks:
                break
            await asyncio.sleep(delay)
            delay = min(2 * delay, PROBE_MAX_S)
        else:
            return
        target = self._target(entry)
        if target is not None:
            await self._move(entry.request_id, target, until_first_token=True)

    def after_tokens(self, entry: JournalEntry) -> None:
        """A prefill-only replica streamed tokens of `entry`: start its hand-off unless one runs
        (streamed or not), it is done, or its last try was too recent."""
        if entry.finished or entry.migrating or not entry.sent or entry.request_id in self.streaming:
            return
        if self.not_before.get(entry.request_id, 0.0) > self.router.clock.now():
            return
        target = self._target(entry)
        if target is not None:
            self.router._spawn(self._move(entry.request_id, target), f"hand off {entry.request_id}")

    def _target(self, entry: JournalEntry) -> str | None:
        """The decode replica the policy names, counted there at once; None if there is none.
        Either way the next try waits `RETRY_S` (no prompt is hashed again for every token)."""
        router = self.router
        self.not_before[entry.request_id] = router.clock.now() + RETRY_S
        routing = routing_request(entry.request_id, entry.prompt_token_ids + entry.sent, entry.params,
                                  router.info.limits.block_size, self.policy.needs_prefix)
        target = self.policy.decode_target(router.loads, routing)
        if target is not None:
            report = router.slots[target].report
            reserve(report, routing)
            router.loads.update(report)
        return target

    async def _move(self, request_id: str, target: str, until_first_token: bool = False) -> None:
        if await self.router.migrate(request_id, target, until_first_token=until_first_token):
            self.router.counters.handed_off += 1
            self.not_before.pop(request_id, None)

    def forget(self, request_id: str) -> None:
        self.not_before.pop(request_id, None)
