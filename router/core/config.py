"""What a Router is told at start (`RouterConfig`), and the finish reason a drain gives."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


DRAIN_FINISH = "shutdown"  # the finish reason of a stream still running when --drain-timeout ends
