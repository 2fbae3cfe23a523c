"""The router's side of a simulated cluster: placement, load reports, prefix index, rebalancing.

It decides with the router's own pieces (`router/routing/placement.py`'s functions, the routing policy,
the `PrefixIndex` fed by the engines' cache events, the `Rebalancer`) in the order `Router`
runs them: a replica's report and cache events are applied when its step ends (its poll), a new
request is placed on the reports as they stand plus what was sent since, and every
`interval_s` the rebalancer's moves are carried out as the Router carries them out, live or
stop-and-copy (`migration.py`: the same protocol, each copy and transfer priced by the cost model).
With `prefill_replicas` the last K replicas only prefill: the same `Disaggregated` policy picks
the pool, and a request that started on a prefill replica is handed off to the decode replica
the policy names as `router/core/handoff.py` does it: its KV streams while the prefill runs and
the commit follows the first token, or, failing that, a live move after a token (retried after
`RETRY_S`), on the same priced migration path.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from shunter.loadtest.sim.costs import CostModel
from shunter.loadtest.sim.events import EventLoop, collector_paused
from shunter.loadtest.sim.metrics import GapHistogram, RequestRecord, Summary, summarize
from shunter.loadtest.sim.migration import SimMigrations
from shunter.loadtest.sim.replica import SimReplica
from shunter.loadtest.sim.runner import TokenFn
from shunter.loadtest.workloads import WorkloadRequest
from shunter.replica.engine_config import EngineConfig
from shunter.replica.engine_protocol import EngineOutput, KVStage
from shunter.replica.load_estimate import expected_blocks
from shunter.router.core import NO_BLOCK, PROBE_MAX_S, RETRY_S, STREAM_POLL_S, MigrationSettings
from shunter.router.serve import cache_size_options, disaggregation_options
from shunter.router.routing import LoadReport, RequestLoad, RoutingRequest
from shunter.router.routing import LoadIndex, apply_stats, request_load, reserve, routing_policy, routing_request
from shunter.router.routing import DEFAULT, DEFAULT_THRESHOLD_TOKENS, Disaggregated
from shunter.router.routing import PrefixIndex
from shunter.router.routing import Rebalancer
from shunter.sampling_params import SamplingParams


REBALANCE_POLL_S = 0.05  # how often Router._rebalance_loop asks the rebalancer whether a round is due


@dataclass
class ClusterConfig:
    num_replicas: int = 2
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(model="sim"))
    routing: str = DEFAULT
    routing_settings: dict[str, Any] = field(default_factory=dict)
    rebalance: bool = False
    rebalancer_settings: dict[str, Any] = field(default_factory=dict)
    large_cache_replicas: int = 0  # cache-size specialization: the first K replicas get the large pool
    large_cache_factor: float = cache_size_options.DEFAULT_FACTOR
    size_threshold_blocks: int | None = None  # None with large replicas: the serve command's default
    link_bytes_per_s: float = 12.5e9  # KV transfer between replicas: 100 Gb/s
    link_latency_s: float = 1e-3
    migration: MigrationSettings = field(default_factory=MigrationSettings)  # live (the Router's default) or not
    prefill_replicas: int = 0  # P/D disaggregation: the last K replicas only prefill long prompts
    prefill_threshold_tokens: int = DEFAULT_THRESHOLD_TOKENS
    # `serve --prefill-last-chunk-tokens`: the prefill replicas' last chunk (None: serve's default)
    prefill_last_chunk_tokens: int | None = None


@dataclass(slots=True)
class _InFlight:
    """The journal entry of one request: where it runs and what it has streamed."""

    record: RequestRecord
    prompt_len: int
    params: SamplingParams
    replica_id: str
    sent: int = 0
    migrating: bool = False
    hashes: list[int] | None = None  # of the prompt's blocks, kept while it may be handed off (P/D)


class SimCluster:
    def __init__(self, config: ClusterConfig, cost: CostModel, loop: EventLoop | None = None,
                 token_fn: TokenFn | None = None, client_max_tokens: int | None = None) -> None:
        """`client_max_tokens`: clients ask for this many tokens instead of their workload length
        (pair it with a `token_fn` that ends each request by EOS at its length)."""
        self.config, self.cost, self.client_max_tokens = config, cost, client_max_tokens
        self.loop = loop or EventLoop()
        self.block_size = config.engine.block_size
        base = config.engine
        if base.num_kv_blocks is None:
            base = dataclasses.replace(base, num_kv_blocks=cost.kv_blocks(self.block_size))
        args = argparse.Namespace(replicas=config.num_replicas, large_cache_replicas=config.large_cache_replicas,
                                  large_cache_factor=config.large_cache_factor,
                                  size_threshold_blocks=config.size_threshold_blocks, num_kv_blocks=base.num_kv_blocks)
        cache_size_options.validate(args)
        threshold = cache_size_options.threshold(args)
        self.index = PrefixIndex()
        prefill_threshold = config.prefill_threshold_tokens if config.prefill_replicas else None
        self.policy = routing_policy(config.routing, self.index, threshold, config.routing_settings, prefill_threshold)
        self.rebalancer = Rebalancer(self.loop, size_threshold_blocks=threshold, **config.rebalancer_settings)
        self.replicas: dict[str, SimReplica] = {}
        self.reports: dict[str, LoadReport] = {}
        with collector_paused():
            self._build_replicas(args, base, cost, token_fn)
        self.loads = LoadIndex(self.reports.values())  # told of every change to a report, as the router's
        self.records: dict[str, RequestRecord] = {}
        self.live: dict[str, _InFlight] = {}
        self.tbt = GapHistogram()
        self.arrivals_left = 0
        self.counters = {"migrated": 0, "migrated_recomputed": 0, "routing_decisions": 0}
        self.handoff_not_before: dict[str, float] = {}
        self.streaming: set[str] = set()  # `Handoff.streaming`
        self.migrations = SimMigrations(self, config.migration)
        self.decide_s = 0.0  # wall time in the policy's select
        self.hash_s = 0.0  # wall time describing requests (prompt hashing)
        self.on_finish: Callable[[RequestRecord], None] | None = None

    def _build_replicas(self, args: argparse.Namespace, base: EngineConfig, cost: CostModel,
                        token_fn: TokenFn | None) -> None:
        """Each replica's engine and its first report (the router's first poll)."""
        config = self.config
        for i, (engine_config, large) in enumerate(cache_size_options.replica_roles(args, base)):
            rid = f"r{i}"
            prefill_only = i >= config.num_replicas - config.prefill_replicas
            if prefill_only:
                cap = disaggregation_options.last_chunk_tokens(config.prefill_last_chunk_tokens,
                                                               config.migration.commit_blocks, self.block_size)
                engine_config = dataclasses.replace(engine_config, last_chunk_tokens=cap)
            replica = SimReplica(rid, self.loop, engine_config, cost, self._on_step, large, token_fn)
            self.replicas[rid] = replica
            self.reports[rid] = LoadReport(rid, large_cache=large, prefill_only=prefill_only)
            apply_stats(self.reports[rid], replica.engine.stats())  # the router's first poll

    # ---- running a workload --------------------------------------------------------------------
    def run(self, workload: list[WorkloadRequest], until: float = math.inf) -> Summary:
        """Every request arrives at its time; the loop runs until all are done (or `until`)."""
        self.loop.at_each([(wr.arrival_s, self._arrive, (wr,)) for wr in workload])
        self.arrivals_left += len(workload)
        if self.config.rebalance:
            self.every(REBALANCE_POLL_S, self._rebalance)
        self.loop.run(until)
        return self.summary()

    def every(self, interval_s: float, fn: Callable[[], None]) -> None:
        """Call `fn` every `interval_s` while requests are still to come or in flight."""
        def tick() -> None:
            fn()
            if self.arrivals_left or self.live:
                self.loop.after(interval_s, tick)

        self.loop.after(interval_s, tick)

    def _arrive(self, wr: WorkloadRequest) -> None:
        self.arrivals_left -= 1
        prompt = wr.prompt_tokens(self.cost.vocab_size)
        params = wr.sampling_params() if self.client_max_tokens is None else \
            wr.sampling_params(max_tokens=self.client_max_tokens, ignore_eos=False)
        started = time.perf_counter()
        routing = routing_request(wr.request_id, prompt, params, self.block_size, self.policy.needs_prefix)
        described = time.perf_counter()
        replica_id = self.policy.choose(self.loads, routing)
        self.decide_s += time.perf_counter() - described
        self.hash_s += described - started
        self.counters["routing_decisions"] += 1
        reserve(self.reports[replica_id], routing)
        self.loads.update(self.reports[replica_id])
        record = RequestRecord(wr.request_id, wr.tenant, wr.priority, self.loop.t, wr.prompt_len, wr.output_len,
                               replica_id)
        self.records[wr.request_id] = record
        prefill_only = self.reports[replica_id].prefill_only
        self.live[wr.request_id] = _InFlight(record, wr.prompt_len, params, replica_id,
                                             hashes=routing.block_hashes if prefill_only else None)
        self.replicas[replica_id].submit(wr.request_id, prompt, params)
        if prefill_only:
            self.streaming.add(wr.request_id)
            self._probe(wr.request_id, STREAM_POLL_S)

    # ---- what a replica's step made (the router's poll) ------------------------------------------
    def _on_step(self, replica: SimReplica, outputs: list[EngineOutput]) -> None:
        rid = replica.replica_id
        apply_stats(self.reports[rid], replica.engine.stats())
        self.loads.update(self.reports[rid])
        events = replica.engine.drain_cache_events()
        if events and self.policy.needs_prefix:  # a policy that hashes no prompt never reads the index
            self.index.apply(rid, events)
        now, live, gap = self.loop.t, self.live, self.tbt.add  # once per token: names bound here
        resuming = self.migrations.resuming
        prefill_only = self.reports[rid].prefill_only
        for out in outputs:
            entry = live.get(out.request_id)
            if entry is None or entry.replica_id != rid:
                continue
            record = entry.record
            n = len(out.new_token_ids)
            if n:
                if resuming and out.request_id in resuming:
                    self.migrations.first_token(out.request_id, now)
                if record.first_token is None:
                    record.first_token = now
                    record.num_cached_tokens = out.num_cached_tokens
                else:
                    gap(now - record.last_token)
                record.last_token = now
                record.num_tokens += n
                entry.sent += n
            if out.finish_reason is not None:  # out.finished
                record.finish = now
                del live[out.request_id]
                self.handoff_not_before.pop(out.request_id, None)
                self.streaming.discard(out.request_id)
                if self.on_finish is not None:
                    self.on_finish(record)
            elif n and prefill_only and not entry.migrating and out.request_id not in self.streaming:
                self._hand_off(out.request_id, entry)

    # ---- P/D hand-offs (`router/core/handoff.py`) ----------------------------------------------------
    def _probe(self, request_id: str, delay: float) -> None:
        """`Handoff._stream`: ask (copying nothing) whether its prefill began; then stream its KV."""
        entry = self.live.get(request_id)
        if entry is None or entry.migrating:
            self.streaming.discard(request_id)
            return
        replica = self.replicas[entry.replica_id]
        replica.command(replica.engine.export_blocks, (request_id, NO_BLOCK, 1),
                        lambda probe: self._probed(request_id, probe, delay))

    def _probed(self, request_id: str, probe: KVStage | None, delay: float) -> None:
        entry = self.live.get(request_id)
        if probe is None or entry is None or entry.migrating:
            self.streaming.discard(request_id)
            return
        if not probe.computed_blocks:
            self.loop.after(delay, self._probe, request_id, min(2 * delay, PROBE_MAX_S))
            return
        self.streaming.discard(request_id)  # from here `migrations` has it (or, refused, the next token tries)
        target = self._handoff_target(request_id, entry)
        if target is not None:
            self.migrations.start(request_id, target, until_first_token=True)

    def _hand_off(self, request_id: str, entry: _InFlight) -> None:
        """`Handoff.after_tokens`: a live move after its first token, unless tried too recently."""
        if self.handoff_not_before.get(request_id, 0.0) > self.loop.t:
            return
        target = self._handoff_target(request_id, entry)
        if target is not None:
            self.migrations.start(request_id, target)

    def _handoff_target(self, request_id: str, entry: _InFlight) -> str | None:
        """`Handoff._target`: the decode replica the policy names, counted there at once."""
        hashes = entry.hashes or []
        tokens = entry.prompt_len + entry.sent
        routing = RoutingRequest(request_id, hashes, len(hashes) + 1,
                                 expected_blocks(tokens, entry.params, self.block_size, tokens), tokens, self.block_size)
        assert isinstance(self.policy, Disaggregated)
        self.handoff_not_before[request_id] = self.loop.t + RETRY_S
        target = self.policy.decode_target(self.loads, routing)
        if target is not None:
            reserve(self.reports[target], routing)
            self.loads.update(self.reports[target])
        return target

    # ---- rebalancing ---------------------------------------------------------------------------------
    def _rebalance(self) -> None:
        if self.rebalancer.due():
            for move in self.rebalancer.plan(self.reports_with_requests(), self.migrations.in_flight):
                self.migrate(move.request_id, move.target)

    def reports_with_requests(self) -> list[LoadReport]:
        """`Router.reports(with_requests=True)`: each report with its in-flight requests' loads."""
        per: dict[str, list[RequestLoad]] = {rid: [] for rid in self.reports}
        for rid, e in self.live.items():
            per[e.replica_id].append(request_load(rid, e.prompt_len, e.params, e.sent, self.block_size))
        return [dataclasses.replace(report, requests=per[rid]) for rid, report in self.reports.items()]

    def migrate(self, request_id: str, target: str) -> bool:
        """`Router.migrate`: live or stop-and-copy as `config.migration` says (`migration.py`)."""
        return self.migrations.start(request_id, target)

    # ---- results -----------------------------------------------------------------------------------
    def summary(self) -> Summary:
        stats = [r.engine.scheduler.stats for r in self.replicas.values()]
        decisions = max(self.counters["routing_decisions"], 1)
        busy = [r.runner.busy_s for r in self.replicas.values()]
        return summarize(
            list(self.records.values()), self.tbt,
            preemptions=sum(s.num_preemptions for s in stats), swaps=sum(s.num_swaps_out for s in stats),
            recomputed_tokens=sum(s.num_recomputed_tokens for s in stats), migrations=self.counters["migrated"],
            priority_preemptions=sum(s.num_priority_preemptions for s in stats),
            migrated_recomputed=self.counters["migrated_recomputed"],
            routing_decisions=self.counters["routing_decisions"],
            decision_us=self.decide_s / decisions * 1e6, describe_us=self.hash_s / decisions * 1e6,
            replica_busy_max_s=max(busy), replica_busy_min_s=min(busy), events=self.loop.num_events,
            migration=self.migrations.stats(),
            handed_off=sum(self.reports[m.source].prefill_only for m in self.migrations.log),
        )
