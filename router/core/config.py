"""What a Router is told at start (`RouterConfig`), and the finish reason a drain gives."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shunter.router.core.migration import MigrationSettings
from shunter.router.routing import DEFAULT


@dataclass
class RouterConfig:
    routing: str = DEFAULT
    routing_settings: dict[str, Any] = field(default_factory=dict)
    max_in_flight: int = 1024  # requests placed on replicas at once
    max_queued: int = 0  # more wait for a slot (`admission.py`); beyond both: RESOURCE_EXHAUSTED
    poll_wait_s: float = 0.5  # an idle replica still reports this often (heartbeat)
    rebalance: bool = True
    rebalancer_settings: dict[str, Any] = field(default_factory=dict)
    rejoin_timeout_s: float = 120.0
    # Cache-size specialization: a request expected (or grown) past this many KV blocks is placed
    # on (or moved to) a large-cache replica. None: off.
    size_threshold_blocks: int | None = None
    migration: MigrationSettings = field(default_factory=MigrationSettings)  # live (pre-copy) or stop-and-copy
    # P/D disaggregation: a prompt with more uncached tokens than this starts on a prefill-only
    # replica and is handed off after its first token. None: off (no replica is prefill-only).
    prefill_threshold_tokens: int | None = None


DRAIN_FINISH = "shutdown"  # the finish reason of a stream still running when --drain-timeout ends
