"""The router's placement and load bookkeeping as plain functions, shared with the simulator.

`Router` (async, over real replicas) and `shunter.loadtest.sim` (a virtual clock, simulated
replicas) both build the routing policy, describe a new request, count what was sent since a
replica's last report and read an engine's stats into its `LoadReport` with these functions, so
a simulated cluster decides exactly as the router does.
"""
from __future__ import annotations

from typing import Any

from shunter.mathutil import cdiv
from shunter.replica.block_hash import block_hashes
from shunter.replica.engine_protocol import EngineStats
from shunter.replica.load_estimate import expected_blocks
from shunter.router.routing.disaggregation import Disaggregated
from shunter.router.routing.load import LoadReport, RequestLoad, RoutingRequest
from shunter.router.routing.policies import RoutingPolicy, SizeSpecialized, make_routing_policy
from shunter.router.routing.prefix_index import PrefixIndex
from shunter.sampling_params import SamplingParams

# What a replica's `EngineStats` contribute to its `LoadReport`.
STAT_FIELDS = ("kv_blocks_total", "kv_blocks_in_use", "kv_blocks_cached", "blocks_expected_growth", "blocks_waiting",
               "num_running", "num_waiting", "num_swapped", "prefix_hit_rate", "step_tile_boundaries")


def routing_policy(name: str, index: PrefixIndex, size_threshold_blocks: int | None = None,
                   settings: dict[str, Any] | None = None, prefill_threshold_tokens: int | None = None
                   ) -> RoutingPolicy:
    """The named policy over `index`, wrapped in cache-size specialization when a size threshold
    is set, and in P/D disaggregation when a prefill threshold is (there are prefill replicas)."""
    policy = make_routing_policy(name, index, **(settings or {}))
    if size_threshold_blocks is not None:
        policy = SizeSpecialized(policy, size_threshold_blocks)
    return policy if prefill_threshold_tokens is None else Disaggregated(policy, index, prefill_threshold_tokens)


def routing_request(request_id: str, prompt: list[int], params: SamplingParams, block_size: int,
                    needs_prefix: bool) -> RoutingRequest:
    """What the policy sees of a new request (prompt hashes only when the policy reads them)."""
    hashes = block_hashes(prompt, block_size) if needs_prefix else []
    return RoutingRequest(request_id, hashes, cdiv(len(prompt), block_size),
                          expected_blocks(len(prompt), params, block_size), len(prompt), block_size)


def reserve(report: LoadReport, request: RoutingRequest) -> None:
    """Count a request just sent to a replica until its next report includes it."""
    report.pending_blocks += request.expected_blocks


def apply_stats(report: LoadReport, stats: EngineStats) -> None:
    """A replica reported: its load is what the engine says; nothing sent is pending any more.

    The fields of STAT_FIELDS, assigned one by one, the speculative acceptance rate and the CPU tier: this runs on every report (in the simulator,
    every replica step), and getattr/setattr by name took twice as long."""
    report.kv_blocks_total = stats.kv_blocks_total
    report.kv_blocks_in_use = stats.kv_blocks_in_use
    report.kv_blocks_cached = stats.kv_blocks_cached
    report.blocks_expected_growth = stats.blocks_expected_growth
    report.blocks_waiting = stats.blocks_waiting
    report.num_running = stats.num_running
    report.num_waiting = stats.num_waiting
    report.num_swapped = stats.num_swapped
    report.prefix_hit_rate = stats.prefix_hit_rate
    report.step_tile_boundaries = stats.step_tile_boundaries
    drafted = stats.spec_draft_tokens
    report.spec_acceptance_rate = stats.spec_accepted_tokens / drafted if drafted else 0.0
    if stats.kv_cpu_blocks_total:
        report.cpu_blocks_total, report.cpu_blocks_cached = stats.kv_cpu_blocks_total, stats.kv_cpu_blocks_cached
        report.cpu_hit_rate = stats.prefix_hits_cpu / stats.prefix_queries if stats.prefix_queries else 0.0
    report.pending_blocks = 0


def request_load(request_id: str, num_prompt_tokens: int, params: SamplingParams, num_sent: int,
                 block_size: int) -> RequestLoad:
    """One in-flight request as the rebalancer weighs it: the blocks it will hold at its end."""
    blocks = expected_blocks(num_prompt_tokens, params, block_size, num_prompt_tokens + num_sent)
    return RequestLoad(request_id, blocks, decoding=num_sent > 0, held_blocks=cdiv(num_prompt_tokens + num_sent, block_size))
