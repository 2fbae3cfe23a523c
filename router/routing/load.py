"""Snapshots the routing policies and the rebalancer decide over.

A `LoadReport` is what one replica looked like at its last report, plus what the router has
sent it since (`pending_blocks`), so that a burst of requests between two reports does not all
land on the replica that looked emptiest. Load is counted in KV blocks: the blocks a replica's
requests hold now, the blocks they will still take (their predicted remaining output) and the
blocks of the prompts in its queue, because blocks are what runs out and causes preemption.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestLoad:
    """One request a replica is serving, as the rebalancer sees it."""

    request_id: str
    blocks: int  # held now plus expected growth: what moves with it
    decoding: bool = True  # only decoding requests are worth migrating (their prefill is paid)
    held_blocks: int = 0  # what its tokens so far take: the KV a move carries now
    owner: str = ""  # the frontend streaming it, when another frontend's (cluster-wide rebalancing)


@dataclass
class LoadReport:
    replica_id: str
    healthy: bool = True
    kv_blocks_total: int = 0
    kv_blocks_in_use: int = 0
    kv_blocks_cached: int = 0
    blocks_expected_growth: int = 0
    blocks_waiting: int = 0
    num_running: int = 0
    num_waiting: int = 0
    num_swapped: int = 0
    prefix_hit_rate: float = 0.0
    pending_blocks: int = 0  # routed here since this report was taken
    large_cache: bool = False  # for cache-size specialization
    prefill_only: bool = False  # P/D disaggregation: takes long prompts' prefills, hands them off after one token
    node: str = ""
    requests: list[RequestLoad] = field(default_factory=list)
    step_tile_boundaries: tuple[int, ...] = ()  # its step-time staircase (EngineStats), for status and metrics
    spec_acceptance_rate: float = 0.0  # speculative drafts accepted / verified since its start (0: none)
    cpu_blocks_total: int = 0  # the prefix cache's CPU tier (0: none)
    cpu_blocks_cached: int = 0
    cpu_hit_rate: float = 0.0  # prompt tokens found in the CPU tier / prompt tokens looked up

    @property
    def load(self) -> int:
        return self.kv_blocks_in_use + self.blocks_expected_growth + self.blocks_waiting + self.pending_blocks

    @property
    def usage(self) -> int:
        """Blocks held now plus those queued or just sent: `load` without the growth it expects
        (Llumnix's virtual usage, less its headroom for priorities)."""
        return self.kv_blocks_in_use + self.blocks_waiting + self.pending_blocks


@dataclass
class RoutingRequest:
    """What a policy knows of a new request: enough to weigh its cost, nothing to run it."""

    request_id: str
    block_hashes: list[int] = field(default_factory=list)  # of the prompt's full blocks, in order
    num_prompt_blocks: int = 1
    expected_blocks: int = 1  # prompt plus expected output, in blocks
    num_prompt_tokens: int = 0  # P/D disaggregation weighs the prompt's uncached tokens
    block_size: int = 16  # tokens a block hash covers


@dataclass(frozen=True)
class Migration:
    """A move the rebalancer plans (or one in flight): this request, from this replica to that."""

    request_id: str
    source: str
    target: str


def imbalanced(high: float, low: float, abs_threshold: float, rel_threshold: float) -> bool:
    """Loads are too far apart when they differ by more than `abs_threshold` blocks AND the
    higher is more than `rel_threshold` times the lower (both, so that small absolute
    differences at low load and small ratios at high load are both tolerated)."""
    return high - low > abs_threshold and high > rel_threshold * low
