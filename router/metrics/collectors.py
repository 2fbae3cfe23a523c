"""Engine and router metrics, read from the serving state when a page is scraped.

Nothing here runs on the token path: each collector reads what the router or the replica keeps
anyway (load reports, `EngineTotals`, `Counters`, the last `EngineStats`) at scrape time, on the
page server's thread. Engine metrics carry vLLM's names and meanings with a `replica` label;
they appear on the frontend's page (every replica, from its reports, its counts kept across its
restarts by `EngineTotals`) and on each replica's own page (its engine alone, counts as the
engine reports them: a restarted replica's page starts again from 0, which Prometheus reads as
a counter reset).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shunter.replica.engine_protocol import EngineStats
from shunter.replica.step_staircase import tile_of
from shunter.router.core import ENGINE_COUNTS
from shunter.router.core import MIGRATION_ABORTS, MIGRATION_REFUSALS, REJECT_REASONS, Router

# ENGINE_COUNTS field -> (counter name, help)
COUNTERS = {
    "num_preemptions": ("shunter:num_preemptions", "Requests preempted by the engine (by recompute or by swap)."),
    "num_swaps": ("shunter:num_swaps", "Preemptions that swapped a request's KV blocks out to CPU memory."),
    "prefix_queries": ("shunter:prefix_cache_queries", "Prefix cache queries, in prompt tokens looked up."),
    "prefix_hits": ("shunter:prefix_cache_hits", "Prefix cache hits, in prompt tokens found cached."),
    "spec_draft_tokens": ("shunter:spec_decode_num_draft_tokens", "Speculative draft tokens verified."),
    "spec_accepted_tokens": ("shunter:spec_decode_num_accepted_tokens", "Speculative draft tokens accepted."),
    "prefix_hits_cpu": ("shunter:prefix_cache_hits_cpu", "Prefix cache hits found in the CPU tier, in prompt tokens "
                        "(also in prefix_cache_hits)."),
    "cpu_offload_bytes": ("shunter:kv_cpu_offload_bytes", "KV bytes copied to the CPU tier of the prefix cache."),
    "cpu_load_bytes": ("shunter:kv_cpu_load_bytes", "KV bytes loaded back from the CPU tier for prefix hits."),
    "cpu_evicted_blocks": ("shunter:kv_cpu_evicted_blocks", "Prefix copies evicted from the CPU tier for room."),
    "cpu_load_timeouts": ("shunter:kv_cpu_load_timeouts", "Loads from the CPU tier given up on after "
                          "--cpu-load-timeout (their tokens were computed instead)."),
}


class EngineGauges(Protocol):
    """What both a `LoadReport` (the router's view) and `EngineStats` (the replica's) have."""

    num_running: int
    num_waiting: int
    num_swapped: int
    kv_blocks_total: int
    kv_blocks_in_use: int
    step_tile_boundaries: tuple[int, ...]


def engine_families(model: str, replicas: Iterable[tuple[str, EngineGauges | None, Mapping[str, int]]],
                    ) -> list[Metric]:
    """Gauges and counters of each (replica id, its gauges, its ENGINE_COUNTS) in `replicas`;
    gauges None: the replica has no current state (it is down), its gauges are left out."""
    labels = ["model_name", "replica"]
    running = GaugeMetricFamily("shunter:num_requests_running", "Requests in the engine's running batch.",
                                labels=labels)
    waiting = GaugeMetricFamily("shunter:num_requests_waiting", "Requests waiting to be scheduled.", labels=labels)
    swapped = GaugeMetricFamily("shunter:num_requests_swapped", "Requests swapped out to CPU memory.", labels=labels)
    usage = GaugeMetricFamily("shunter:kv_cache_usage_perc",
                              "KV-cache usage: blocks held by requests / all blocks (1 = 100 percent).", labels=labels)
    tile = GaugeMetricFamily("shunter:step_tile_tokens",
                             "Tokens per tile of the step-time staircase timed at start-up (0: not timed, or no stairs).",
                             labels=labels)
    boundaries = GaugeMetricFamily("shunter:step_tile_boundaries_info",
                                   "1, labelled with the token counts after which the step time jumps, in order.",
                                   labels=[*labels, "boundaries"])
    counters = {field: CounterMetricFamily(name, doc, labels=labels) for field, (name, doc) in COUNTERS.items()}
    for replica_id, g, counts in replicas:
        values = [model, replica_id]
        if g is not None:
            running.add_metric(values, g.num_running)
            waiting.add_metric(values, g.num_waiting)
            swapped.add_metric(values, g.num_swapped)
            usage.add_metric(values, g.kv_blocks_in_use / g.kv_blocks_total if g.kv_blocks_total else 0.0)
            tile.add_metric(values, tile_of(g.step_tile_boundaries) or 0)
            boundaries.add_metric([*values, ",".join(map(str, g.step_tile_boundaries))], 1.0)
        for field, family in counters.items():
            family.add_metric(values, counts[field])
    return [running, waiting, swapped, usage, tile, boundaries, *counters.values()]


class ReplicaCollector(Collector):
    """A replica's own page: its engine's last published stats."""

    def __init__(self, replica_id: str, model: str, stats: Callable[[], EngineStats]) -> None:
        self.replica_id, self.model, self.stats = replica_id, model, stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats()
        yield from engine_families(self.model, [(self.replica_id, s, {f: getattr(s, f) for f in ENGINE_COUNTS})])


class RouterCollector(Collector):
    """The frontend's page, beside the request metrics: every replica's engine metrics and
    health, and the router's counters. Read from the event loop's thread while it runs: only
    whole numbers and copies of small dicts are taken, never a half-updated structure."""

    def __init__(self, router: Router, model: str) -> None:
        self.router, self.model = router, model

    def collect(self) -> Iterator[Metric]:
        r, model = self.router, self.model
        slots = list(r.slots.items())
        # A replica that is down has a stale report until it rejoins: its gauges are left out.
        yield from engine_families(model, [(rid, s.report if s.healthy else None, dict(s.totals.totals))
                                           for rid, s in slots])
        healthy = GaugeMetricFamily("shunter:replica_healthy", "1 while the router routes to the replica, else 0.",
                                    labels=["model_name", "replica"])
        for rid, s in slots:
            healthy.add_metric([model, rid], 1.0 if s.healthy else 0.0)
        yield healthy
        yield one(GaugeMetricFamily("shunter:requests_in_flight", "Requests the router holds (streaming or queued).",
                                    labels=["model_name"]), [model], len(r.journal))
        yield one(GaugeMetricFamily("shunter:requests_queued", "Requests waiting for a slot (--max-queued).",
                                    labels=["model_name"]), [model], r.admission.queued)
        c = r.counters
        routed, rejected = dict(c.routed_to), dict(c.rejected_by)
        decisions = CounterMetricFamily("shunter:routing_decisions",
                                        "Requests placed on a replica, by routing policy and replica "
                                        "(a failed-over request is placed again).",
                                        labels=["model_name", "policy", "replica"])
        for rid, _ in slots:
            decisions.add_metric([model, r.policy.name, rid], routed.get(rid, 0))
        yield decisions
        refused = CounterMetricFamily("shunter:requests_rejected",
                                      "Requests refused without generating, by reason "
                                      "(invalid, max_in_flight: RESOURCE_EXHAUSTED past the admission queue, "
                                      "draining, replica_refused, no_replica).",
                                      labels=["model_name", "reason"])
        for reason in {**dict.fromkeys(REJECT_REASONS), **rejected}:
            refused.add_metric([model, reason], rejected.get(reason, 0))
        yield refused
        for name, doc, known, counts in (
            ("shunter:migrations_aborted", "Migrations stopped before their commit, by reason (the request ran on "
             "where it was, or failed over when its replica died).", MIGRATION_ABORTS, dict(c.migrations_aborted_by)),
            ("shunter:migrations_refused", "Migrations refused before they started, by reason (the request untouched).",
             MIGRATION_REFUSALS, dict(c.migrations_refused_by)),
        ):
            family = CounterMetricFamily(name, doc, labels=["model_name", "reason"])
            for reason in {**dict.fromkeys(known), **counts}:
                family.add_metric([model, reason], counts.get(reason, 0))
            yield family
        yield one(GaugeMetricFamily("shunter:migrations_in_flight", "Migrations running now (staging or committing).",
                                    labels=["model_name"]), [model], len(r.migrations_in_flight))
        for name, doc, value in (
            ("shunter:migrations", "Running requests moved between replicas.", c.migrated),
            ("shunter:migrations_recomputed", "Of the migrations, those whose KV did not move.", c.migrated_recomputed),
            ("shunter:failovers", "Requests resubmitted elsewhere because their replica died.", c.failed_over),
            ("shunter:handoffs", "P/D disaggregation: requests moved from a prefill replica to a decode replica after "
             "their first token (also counted in shunter:migrations).", c.handed_off),
            ("shunter:replica_rejoins", "Replicas routed to again after they came back.", c.rejoined),
        ):
            yield one(CounterMetricFamily(name, doc, labels=["model_name"]), [model], value)


def one(family: Metric, labels: list[str], value: float) -> Metric:
    """`family` with its one sample."""
    family.add_metric(labels, value)
    return family
