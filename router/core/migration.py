"""Moving a running request to another replica, as the router coordinates it (the KV itself goes
replica to replica: `cluster/kv_transport.py` over Ray, in-process objects in tests).

Live (the default; Llumnix's pre-copy): the target reserves blocks for the request first; then,
stage by stage, the source copies the blocks completed since the last stage while the request
keeps decoding there and streaming to its client, and the target writes them into its
reservation. When few blocks remain (`commit_blocks`) or after `max_stages` stages, the commit:
the source stops the request between two steps and sends the rest with the sampler's state, the
stream's ownership moves (tokens from the source past the commit are ignored), and the target
resumes. Only the commit stops the request, so its downtime does not grow with its context.

Stop-and-copy (`mode="stop-and-copy"`, kept for the benchmark): the commit alone, with every block.

Streamed (`until_first_token`, P/D disaggregation's hand-off, `handoff.py`): started while the
request is still prefilling, each call (`stream_blocks`) copies the blocks the prefill completed
since the last, asking again every `STREAM_POLL_S` while none is new, until the call that finds
the prompt computed: that one takes the request out at that step boundary with the last chunk's
blocks (the commit's export), so the prefill replica decodes nothing past the first token and the
commit waits for no further step.

Anything that fails before the commit aborts cleanly: the request runs on where it was (or
fails over, if its replica died), the target's reservation is cancelled (and would be freed by
its watchdog anyway), and the reason is counted. A migration that cannot start is refused, with
its reason counted, and the request is not touched.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, TypeVar

from shunter.mathutil import cdiv
from shunter.router.core.replica_client import ExportedRequest, ReplicaDead

if TYPE_CHECKING:
    from shunter.router.core.router import ReplicaSlot, Router
    from shunter.router.core.state_store import JournalEntry

log = logging.getLogger(__name__)
T = TypeVar("T")
MIGRATION_MODES = ("live", "stop-and-copy")
# Why a migration was refused before it started (the request untouched), or aborted before its commit.
MIGRATION_REFUSALS = ("unknown_request", "finished", "already_migrating", "unknown_target", "unhealthy_target",
                      "same_replica", "block_size")
MIGRATION_ABORTS = ("target_out_of_blocks", "target_died", "source_died", "request_ended", "timeout")
STREAM_POLL_S = 0.01  # a streamed migration asks again this often while its prefill made no new block


@dataclass(frozen=True)
class MigrationSettings:
    mode: str = "live"
    max_stages: int = 3  # then commit, however many blocks remain
    commit_blocks: int = 16  # commit once at most this many blocks are left to send
    stage_timeout_s: float = 30.0  # the stages together; past it the migration aborts

    def __post_init__(self) -> None:
        if self.mode not in MIGRATION_MODES:
            raise ValueError(f"migration mode: must be one of {', '.join(MIGRATION_MODES)}, got {self.mode!r}")
        if self.max_stages < 0 or self.commit_blocks < 0 or self.stage_timeout_s <= 0:
            raise ValueError("migration: max_stages and commit_blocks must be >= 0, stage_timeout_s > 0")


@dataclass
class MigrationRecord:
    """One migration that committed: what `bench migration` and `shunter status` read."""

    request_id: str
    source: str
    target: str
    mode: str
    stages: int
    blocks_staged: int
    blocks_at_commit: int
    bytes_moved: int  # blocks staged and committed x a block's KV bytes
    staging_s: float  # reserve + stages: the request kept running
    downtime_s: float  # the commit: from asking the source to stop to the target taking it over
    resumed_tokens: int  # tokens the target resumed with KV (0: it recomputed)


class Aborted(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def refusal(router: Router, entry: JournalEntry | None, target: str) -> str | None:
    """Why `entry` cannot move to `target` now; None if it can."""
    if entry is None:
        return "unknown_request"
    if entry.finished:
        return "finished"
    if entry.migrating:
        return "already_migrating"
    dst = router.slots.get(target)
    if dst is None:
        return "unknown_target"
    if not dst.healthy:
        return "unhealthy_target"
    src = router.slots.get(entry.replica_id or "")
    if src is None or src is dst:
        return "same_replica" if src is dst else "unknown_request"
    if src.info is not None and dst.info is not None and src.info.limits.block_size != dst.info.limits.block_size:
        return "block_size"
    return None


async def migrate(router: Router, request_id: str, target: str, with_kv: bool = True,
                  until_first_token: bool = False) -> bool:
    """Move a running request to `target`; the stream continues from where it was. False when
    refused or aborted before the commit (counted by reason; the request runs on).
    `until_first_token`: streamed (live whatever the mode; see the module's docstring)."""
    entry = router.journal.get(request_id)
    why = refusal(router, entry, target)
    if why is not None:
        router.counters.refuse_migration(why)
        return False
    src, dst = router.slots[entry.replica_id], router.slots[target]
    settings = router.config.migration
    live = with_kv and settings.mode == "live"
    entry.migrating = True
    router.migrations_in_flight[request_id] = (src.client.replica_id, target)
    started = time.perf_counter()
    try:
        sent, epoch, stages, staged, exported, stopping = 0, None, 0, 0, None, None
        try:
            if until_first_token and with_kv:
                sent, epoch, stages, staged, exported, stopping = await _stream(router, entry, src, dst)
            elif live:
                sent, epoch, stages, staged = await asyncio.wait_for(_stage(router, entry, src, dst),
                                                                     settings.stage_timeout_s)
        except (Aborted, asyncio.TimeoutError) as e:
            reason = e.reason if isinstance(e, Aborted) else "timeout"
            router.counters.abort_migration(reason)
            if reason != "target_died":
                router._spawn(_cancel(dst, request_id), f"cancel migration of {request_id}")
            return False
        return await _commit(router, entry, src, dst, with_kv, sent, epoch, stages, staged, started, exported,
                             stopping, reserved=live or (until_first_token and with_kv))
    finally:
        entry.migrating = False
        router.migrations_in_flight.pop(request_id, None)


async def _reserve(router: Router, entry: JournalEntry, dst: ReplicaSlot) -> None:
    """The target holds the blocks the request holds now plus a commit's worth, or the move aborts."""
    held = cdiv(len(entry.prompt_token_ids) + len(entry.sent) + 1, router.info.limits.block_size)
    if not await _on("target_died", dst.client.reserve(entry.request_id, held + router.config.migration.commit_blocks)):
        raise Aborted("target_out_of_blocks")


async def _stage(router: Router, entry: JournalEntry, src: ReplicaSlot, dst: ReplicaSlot
                 ) -> tuple[int, int | None, int, int]:
    """Reserve on the target, then copy stages until few blocks remain (a stage finds at most
    `commit_blocks` new) or `max_stages` ran: (blocks sent, the epoch they were sent in, stages,
    blocks staged). A stage asks the source for at least one more than a commit's worth, so the
    question costs one call and no copy when the commit can take the rest."""
    settings, request_id = router.config.migration, entry.request_id
    await _reserve(router, entry, dst)
    sent, epoch, stages, staged = 0, None, 0, 0
    while stages < settings.max_stages:
        # The first stage copies whatever is complete; a later one only if more than a commit's worth.
        least = 1 if sent == 0 else settings.commit_blocks + 1
        stage = await _on("source_died", src.client.export_blocks(request_id, sent, least))
        if stage is None or entry.finished:
            raise Aborted("request_ended")
        stages += 1
        if epoch is not None and stage.epoch != epoch:
            sent, epoch = 0, stage.epoch  # preempted since the last stage: what was sent is stale, send it again
            continue
        epoch = stage.epoch
        if stage.num_blocks == 0:
            break
        if not await _on("target_died", dst.client.import_blocks(stage)):
            raise Aborted("target_out_of_blocks")
        sent, staged = stage.end_block, staged + stage.num_blocks
    return sent, epoch, stages, staged


async def _stream(router: Router, entry: JournalEntry, src: ReplicaSlot, dst: ReplicaSlot
                  ) -> tuple[int, int | None, int, int, ExportedRequest, float]:
    """Reserve on the target, then copy each block the prefill completes (asking again every
    `STREAM_POLL_S` while none is new) until the source, finding the prompt computed, takes the
    request out at that step boundary: (blocks sent, their epoch, stages, blocks staged, the
    commit's export, when it was asked for). Past `stage_timeout_s` it aborts between two calls,
    never by cancelling one: a call may have taken the request out."""
    request_id = entry.request_id
    deadline = time.perf_counter() + router.config.migration.stage_timeout_s
    await _reserve(router, entry, dst)
    sent, epoch, stages, staged = 0, None, 0, 0
    while True:
        if time.perf_counter() > deadline:
            raise Aborted("timeout")
        asked = time.perf_counter()
        stage, exported = await _on("source_died", src.client.stream_blocks(request_id, sent, epoch))
        if exported is not None:
            return sent, epoch, stages, staged, exported, asked
        if stage is None or entry.finished:
            raise Aborted("request_ended")
        if epoch is not None and stage.epoch != epoch:
            stages += 1
            sent, epoch = 0, stage.epoch  # preempted since the last stage: send it all again
            continue
        epoch = stage.epoch
        if stage.num_blocks == 0:
            await asyncio.sleep(STREAM_POLL_S)
            continue
        stages += 1
        if not await _on("target_died", dst.client.import_blocks(stage)):
            raise Aborted("target_out_of_blocks")
        sent, staged = stage.end_block, staged + stage.num_blocks


async def _on(reason: str, call: Awaitable[T]) -> T:
    """The call's result; a dead replica aborts the migration with `reason`."""
    try:
        return await call
    except ReplicaDead:
        raise Aborted(reason) from None


async def _cancel(dst: ReplicaSlot, request_id: str) -> None:
    try:
        await dst.client.cancel_migration(request_id)
    except Exception:  # the target is gone, and its reservation with it (or its watchdog frees it)
        pass


async def _commit(router: Router, entry: JournalEntry, src: ReplicaSlot, dst: ReplicaSlot, with_kv: bool, sent: int,
                  epoch: int | None, stages: int, staged: int, started: float,
                  exported: ExportedRequest | None = None, stopping: float | None = None, reserved: bool = False
                  ) -> bool:
    """Stop the request on the source (unless a streamed migration's last call did: `exported`,
    asked for at `stopping`), hand its stream to the target, resume it there. `reserved`: the
    target holds a reservation, cancelled if the request ended meanwhile."""
    request_id, target = entry.request_id, dst.client.replica_id
    if exported is None:
        stopping = time.perf_counter()
        try:
            exported = await src.client.export(request_id, with_kv, sent, epoch)
        except ReplicaDead:
            router.counters.abort_migration("source_died")
            router._spawn(_cancel(dst, request_id), f"cancel migration of {request_id}")
            return False  # its poll loop fails the request over
    if exported is None or entry.finished:
        if reserved:
            router._spawn(_cancel(dst, request_id), f"cancel migration of {request_id}")
        return False  # it finished meanwhile; its last tokens come through the poll
    tokens = exported.output_token_ids
    # From here the source's late deltas for it are ignored; the state has all its tokens.
    entry.epoch += 1
    entry.replica_id, epoch_now = target, entry.epoch
    router._emit(entry, tokens[len(entry.sent) - entry.offset:], None, src.client.replica_id, exported.output_logprobs,
                 exported.prompt_logprobs)
    try:
        resumed = await dst.client.import_(exported)
    except Exception:
        log.exception("import of %s into %s failed; failing over", request_id, target)
        if entry.epoch == epoch_now and not entry.finished:
            await router._failover(entry)
        return False
    if entry.finished:  # the client left during the move
        await router._quiet_abort(dst, request_id)
    elif entry.replica_id == target:  # journaled where it runs now (other frontends count its blocks there)
        router.journal.placed(entry, cdiv(len(entry.prompt_token_ids) + entry.params.max_tokens,
                                          router.info.limits.block_size))
    done = time.perf_counter()
    router.counters.migrated += 1
    router.counters.migrated_recomputed += not resumed
    limits = router.info.limits
    at_commit = max(0, cdiv(len(entry.prompt_token_ids) + len(tokens), limits.block_size) - sent) if with_kv else 0
    router.migration_log.append(MigrationRecord(
        request_id, src.client.replica_id, target, "live" if stages or sent else "stop-and-copy", stages, staged,
        at_commit, (staged + at_commit) * limits.kv_block_bytes, stopping - started, done - stopping, resumed))
    return True
