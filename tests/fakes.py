"""Shared fakes for router tests: replicas for routing simulations; the engine comes from the library.

The fake engine (`FakeEngine`, `ByteTokenizer`, the deterministic 'model' and its
`reference_output`) lives in `shunter.testing.fake_engine`, because the benchmarks and the
tests share it; it is re-exported here so tests keep one import.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shunter.mathutil import cdiv
from shunter.replica.block_hash import block_hashes
from shunter.replica.engine_protocol import CacheEvent
from shunter.router.routing import LoadReport, RequestLoad
from shunter.testing.fake_engine import (  # noqa: F401 (re-exported for tests)
    EOS,
    VOCAB,
    ByteTokenizer,
    FakeEngine,
    make_zero_cost_engine,
    next_token,
    reference_output,
)


# ---- routing simulation ------------------------------------------------------------------
@dataclass
class FakeReplica:
    """A replica reduced to what routing sees: blocks held per request and a prefix cache."""

    replica_id: str
    block_size: int = 16
    kv_blocks_total: int = 1024
    requests: dict[str, int] = field(default_factory=dict)  # request id -> blocks (held + growth)
    cached: set[int] = field(default_factory=set)
    events: list = field(default_factory=list)
    healthy: bool = True

    def admit(self, request_id: str, prompt: list[int], max_tokens: int) -> int:
        """Take a request; returns its number of prompt tokens found in the cache."""
        hashes = block_hashes(prompt, self.block_size)
        hit = 0
        for h in hashes:
            if h not in self.cached:
                break
            hit += 1
        for h in hashes[hit:]:
            self.cached.add(h)
            self.events.append(CacheEvent("stored", h))
        self.requests[request_id] = cdiv(len(prompt) + max_tokens, self.block_size)
        return hit * self.block_size

    def finish(self, request_id: str) -> None:
        self.requests.pop(request_id, None)

    def drain_cache_events(self) -> list:
        events, self.events = self.events, []
        return events

    def report(self) -> LoadReport:
        return LoadReport(
            self.replica_id, healthy=self.healthy, kv_blocks_total=self.kv_blocks_total,
            kv_blocks_in_use=sum(self.requests.values()), num_running=len(self.requests),
            requests=[RequestLoad(rid, b) for rid, b in self.requests.items()],
        )
