"""Migration in the simulator: `router/core/migration.py`'s protocol, call for call, over the
engines' own migration methods run as `SimReplica` commands, every copy of KV charged.

Live (the default): the target reserves blocks for the request (what it holds plus
`commit_blocks`); then, stage by stage, the source gathers the full blocks completed since the
last stage while the request keeps decoding there, they cross the link, and the target writes
them into its reservation. A later stage runs only if more than `commit_blocks` new full blocks
are there; after `max_stages` stages the commit comes anyway. The commit: the source stops the
request between two steps and gathers the rest, which cross the link, and the target seats the
request on its reservation; the stream's ownership moves there. Stop-and-copy: the commit alone,
with every block. Streamed (P/D's hand-off): each call copies the blocks the prefill completed,
asking again every `STREAM_POLL_S` while none is new, until the call that finds the prompt
computed takes the request out at that step boundary (`ReplicaCore.stream_blocks`).
The settings are the Router's (`MigrationSettings`), so the simulator cannot
show a gain the cluster's migrations would not get.

What is charged: a gather or a scatter of n blocks holds its replica for
`CostModel.kv_copy_seconds` (its next step waits); a transfer takes `CostModel.transfer_seconds`
over the link (latency + bytes / bandwidth) while both replicas keep stepping; a command that
arrives while a step runs waits for the step's end, as in `ReplicaCore`. Each migration that
commits leaves a `MigrationRecord` (downtime as the Router measures it: from asking the source
to stop to the target holding the request) and the gap its client saw (the source's last token
to the target's first). A migration whose KV did not come along is counted apart, by why: its
source preempted it while it staged (the commit finds it waiting: it is moved as a queued
request), or the target had no blocks for it (stop-and-copy reserves none); its client's gap then
includes a wait in a queue and a recompute.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shunter.mathutil import cdiv
from shunter.replica.engine_protocol import KVStage, MigrationState
from shunter.router.core import STREAM_POLL_S, MigrationRecord, MigrationSettings

if TYPE_CHECKING:
    from shunter.loadtest.sim.cluster import SimCluster
    from shunter.loadtest.sim.replica import SimReplica


@dataclass
class SimMigrations:
    """The migrations of one simulated cluster: those moving now, and what became of the others."""

    cluster: SimCluster
    settings: MigrationSettings
    in_flight: dict[str, tuple[str, str]] = field(default_factory=dict)  # request id -> (source, target)
    log: list[MigrationRecord] = field(default_factory=list)  # every one that committed
    gaps: list[float] = field(default_factory=list)  # per migration that kept its KV, what its client waited
    gaps_recomputed: list[float] = field(default_factory=list)  # the same, of those that lost it
    lost_kv: dict[str, int] = field(default_factory=dict)  # migrations whose KV did not come, by why
    refused_by: dict[str, int] = field(default_factory=dict)
    aborted_by: dict[str, int] = field(default_factory=dict)
    # Committed, no token from the target yet: id -> (its last token from the source, whether its KV came).
    resuming: dict[str, tuple[float, bool]] = field(default_factory=dict)

    def start(self, request_id: str, target: str, until_first_token: bool = False) -> bool:
        """`Router.migrate`: False (counted) when it cannot start; else it runs on in virtual time.
        `until_first_token`: streamed from its prefill on (P/D's hand-off)."""
        entry, c = self.cluster.live.get(request_id), self.cluster
        why = ("unknown_request" if entry is None else "already_migrating" if entry.migrating
               else "unknown_target" if target not in c.replicas else "same_replica" if entry.replica_id == target
               else None)
        if why is not None:
            self.refused_by[why] = self.refused_by.get(why, 0) + 1
            return False
        entry.migrating = True
        self.in_flight[request_id] = (entry.replica_id, target)
        _Move(self, request_id, c.replicas[entry.replica_id], c.replicas[target], until_first_token).begin()
        return True

    def first_token(self, request_id: str, now: float) -> None:
        """The target's first token of a request that moved: the gap its client saw."""
        last, kept = self.resuming.pop(request_id)
        (self.gaps if kept else self.gaps_recomputed).append(now - last)

    def stats(self) -> dict[str, Any]:
        """What the summary shows of them."""
        def pct(values: list[float], q: float) -> float:
            return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else 0.0

        downtimes = [r.downtime_s for r in self.log]
        return {
            "mode": self.settings.mode, "committed": len(self.log),
            "stages_mean": sum(r.stages for r in self.log) / len(self.log) if self.log else 0.0,
            "blocks_staged": sum(r.blocks_staged for r in self.log),
            "blocks_at_commit": sum(r.blocks_at_commit for r in self.log),
            "downtime_p50_s": pct(downtimes, 0.5), "downtime_p99_s": pct(downtimes, 0.99),
            "downtime_max_s": max(downtimes, default=0.0),
            "gap_p50_s": pct(self.gaps, 0.5), "gap_p99_s": pct(self.gaps, 0.99),
            "gap_max_s": max(self.gaps, default=0.0), "lost_kv": dict(self.lost_kv),
            "gap_recomputed_p50_s": pct(self.gaps_recomputed, 0.5),
            "aborted_by": dict(self.aborted_by), "refused_by": dict(self.refused_by),
        }


class _Move:
    """One migration, as a chain of callbacks: each step is a replica command or a transfer."""

    def __init__(self, owner: SimMigrations, request_id: str, src: SimReplica, dst: SimReplica,
                 streamed: bool = False) -> None:
        self.owner, self.request_id, self.src, self.dst, self.streamed = owner, request_id, src, dst, streamed
        c = owner.cluster
        self.loop, self.cost, self.block_size = c.loop, c.cost, c.block_size
        self.started = self.stopping = self.loop.t
        self.sent, self.epoch, self.stages, self.staged = 0, None, 0, 0

    # ---- charges ---------------------------------------------------------------------------
    def _copy(self, num_blocks: int) -> float:
        return self.cost.kv_copy_seconds(num_blocks * self.block_size)

    def _then_transfer(self, num_blocks: int, fn: Any, *args: Any) -> None:
        link = self.owner.cluster.config
        self.loop.after(self.cost.transfer_seconds(num_blocks * self.block_size, link.link_bytes_per_s,
                                                   link.link_latency_s), fn, *args)

    def _running(self) -> bool:
        return self.request_id in self.owner.cluster.live

    # ---- stages --------------------------------------------------------------------------------
    def begin(self) -> None:
        if self.owner.settings.mode != "live" and not self.streamed:
            self._commit()
            return
        entry, settings = self.owner.cluster.live[self.request_id], self.owner.settings
        held = cdiv(entry.prompt_len + entry.sent + 1, self.block_size)
        self.dst.command(self.dst.engine.reserve_migration, (self.request_id, held + settings.commit_blocks),
                         self._reserved)

    def _reserved(self, ok: bool) -> None:
        if not ok:
            self._abort("target_out_of_blocks")
        else:
            self._stage()

    def _stage(self) -> None:
        if self.streamed:
            asked = self.loop.t
            self.src.command(self._stream_call, (), lambda result: self._streamed(result, asked),
                             lambda result: self._copy(result[0].num_blocks if result[0] is not None else
                                                       len(result[1].kv) if result[1] is not None and result[1].kv
                                                       else 0))
            return
        least = 1 if self.sent == 0 else self.owner.settings.commit_blocks + 1
        self.src.command(self.src.engine.export_blocks, (self.request_id, self.sent, least), self._exported_stage,
                         lambda stage: self._copy(stage.num_blocks) if stage is not None else 0.0)

    def _stream_call(self) -> tuple[KVStage | None, MigrationState | None]:
        """`ReplicaCore.stream_blocks`: a stage while it prefills, else the commit's export."""
        engine = self.src.engine
        if not engine.prefilled(self.request_id):
            return engine.export_blocks(self.request_id, self.sent, 1), None
        return None, engine.export_request(self.request_id, self.sent, self.epoch)

    def _streamed(self, result: tuple[KVStage | None, MigrationState | None], asked: float) -> None:
        stage, state = result
        if state is not None:
            self.stopping = asked
            self._exported(state)
        else:
            self._exported_stage(stage)

    def _exported_stage(self, stage: KVStage | None) -> None:
        if stage is None or not self._running():
            self._abort("request_ended")
            return
        if self.epoch is not None and stage.epoch != self.epoch:
            self.stages += 1
            self.sent, self.epoch = 0, stage.epoch  # preempted since the last stage: send it all again
            self._next()
            return
        self.epoch = stage.epoch
        if stage.num_blocks == 0:
            if self.streamed:  # no new block yet: ask again
                self.loop.after(STREAM_POLL_S, self._next)
                return
            self.stages += 1
            self._commit()
            return
        self.stages += 1
        self._then_transfer(stage.num_blocks, self.dst.command, self.dst.engine.import_blocks, (stage,),
                            lambda ok: self._imported_stage(ok, stage), lambda ok: self._copy(stage.num_blocks))

    def _imported_stage(self, ok: bool, stage: KVStage) -> None:
        if not ok:
            self._abort("target_out_of_blocks")
            return
        self.sent, self.staged = stage.end_block, self.staged + stage.num_blocks
        self._next()

    def _next(self) -> None:
        if self.streamed or self.stages < self.owner.settings.max_stages:
            self._stage()
        else:
            self._commit()

    def _abort(self, reason: str) -> None:
        owner = self.owner
        owner.aborted_by[reason] = owner.aborted_by.get(reason, 0) + 1
        self.dst.command(self.dst.engine.cancel_migration, (self.request_id,))
        self._done()

    def _done(self) -> None:
        entry = self.owner.cluster.live.get(self.request_id)
        if entry is not None:
            entry.migrating = False
        self.owner.in_flight.pop(self.request_id, None)

    # ---- the commit ------------------------------------------------------------------------------
    def _commit(self) -> None:
        self.stopping = self.loop.t
        self.src.command(self.src.engine.export_request, (self.request_id, self.sent, self.epoch), self._exported,
                         lambda state: self._copy(len(state.kv)) if state is not None and state.kv else 0.0)

    def _exported(self, state: MigrationState | None) -> None:
        entry = self.owner.cluster.live.get(self.request_id)
        if state is None or entry is None:  # it finished on the source meanwhile
            if self.streamed or self.owner.settings.mode == "live":  # the target holds a reservation
                self.dst.command(self.dst.engine.cancel_migration, (self.request_id,))
            self._done()
            return
        entry.replica_id = self.dst.replica_id  # the stream's ownership moves with the commit
        if entry.record.last_token is not None:
            self.owner.resuming[self.request_id] = (entry.record.last_token, state.kv is not None)
        moved = len(state.kv) if state.kv else 0
        self._then_transfer(moved, self.dst.command, self.dst.engine.import_request, (state,),
                            lambda resumed: self._imported(resumed, state), lambda _: self._copy(moved))

    def _imported(self, resumed: int, state: MigrationState) -> None:
        owner, c = self.owner, self.owner.cluster
        entry = c.live.get(self.request_id)
        if entry is not None:
            entry.record.num_migrations += 1
        c.counters["migrated"] += 1
        c.counters["migrated_recomputed"] += not resumed
        if not resumed:
            why = "preempted_on_source" if state.kv is None else "no_room_on_target"
            owner.lost_kv[why] = owner.lost_kv.get(why, 0) + 1
            if self.request_id in owner.resuming:
                owner.resuming[self.request_id] = (owner.resuming[self.request_id][0], False)
        blocks = cdiv(state.num_computed_tokens, self.block_size) - state.kv_first_block if state.kv else 0
        block_bytes = self.cost.kv_bytes_per_token * self.block_size
        owner.log.append(MigrationRecord(
            self.request_id, self.src.replica_id, self.dst.replica_id, owner.settings.mode, self.stages, self.staged,
            max(blocks, 0), (self.staged + max(blocks, 0)) * block_bytes, self.stopping - self.started,
            self.loop.t - self.stopping, resumed))
        self._done()
