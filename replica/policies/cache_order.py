"""Cache-aware ordering of the waiting queue, an option of every policy (`--cache-aware-order`).

Routing sends a prompt to the replica holding its prefix, but the replica's own policy then
orders its queue without looking at the cache: a request whose prefix is cached now may wait
until other requests' blocks have evicted it, then recompute it. With this option, within each
class (the policy's `level`) waiting requests with more cached prefix blocks go first (SGLang's
longest-prefix-match order), so a prefix runs again while it is still cached and requests of
one prefix tend to run together instead of evicting each other.

Bounded by the policy's own starvation bound (`starvation_bound_s`: its aging or max wait, 30 s
by default): a request that has waited that long keeps the policy's order and goes ahead of
every cache-ordered one of its class, so preferring hits never makes anyone wait past it.

Scoring is cheap but not free: a request's block hashes are computed once (memoized while it
waits; a queued request's tokens do not change), then each step bisects its chain against the
cache (`KVCacheManager.cached_prefix_blocks`: a few lookups), about 3 us a request in Python on
this CPU. So only the head of the queue is scored: the first `max_scored` waiting requests in the
policy's order are reordered among themselves, and the rest keep the policy's order. A step
admits at most a few requests from the head; a window of 256 costs under a millisecond a step,
where scoring a deep queue whole (2,000 waiting: ~13 ms) would cost more than a GPU step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from shunter.replica.block_hash import block_hashes
from shunter.replica.policies.base import SchedulingPolicy
from shunter.replica.request import Request, RequestStatus

MAX_SCORED = 256


@dataclass
class CacheAwareOrder:
    block_size: int
    max_scored: int = MAX_SCORED
    # request id -> (its num_tokens when hashed, the hashes of its blocks a prefix hit may cover)
    _hashes: dict[str, tuple[int, list[int]]] = field(default_factory=dict)

    def reorder(self, plan: list[Request], policy: SchedulingPolicy,
                cached_blocks: Callable[[list[int]], int]) -> list[Request]:
        """`plan` with the head of its waiting requests reordered among their own positions
        (running and swapped ones, and waiting ones past the head, stay where the policy put
        them). `cached_blocks(hashes)`: how many of the leading hashes are cached now."""
        positions = [i for i, r in enumerate(plan) if r.status is RequestStatus.WAITING][:self.max_scored]
        memo, self._hashes = self._hashes, {}
        if len(positions) < 2:
            return plan
        bound = policy.starvation_bound_s
        keyed = []
        for order, i in enumerate(positions):
            r = plan[i]
            aged = policy.waited(r) >= bound
            hits = 0 if aged else cached_blocks(self._prefix_hashes(r, memo))
            keyed.append(((policy.level(r), not aged, -hits, order), r))
        keyed.sort(key=lambda kv: kv[0])
        out = list(plan)
        for i, (_, r) in zip(positions, keyed):
            out[i] = r
        return out

    def _prefix_hashes(self, request: Request, memo: dict[str, tuple[int, list[int]]]) -> list[int]:
        """The hashes of the full blocks before its last token (a hit leaves one to compute)."""
        n = request.num_tokens
        known = memo.get(request.request_id)
        if known is None or known[0] != n:
            usable = (n - 1) // self.block_size * self.block_size
            known = (n, block_hashes(request.token_slice(0, usable), self.block_size))
        self._hashes[request.request_id] = known
        return known[1]
