"""Prefill/decode disaggregation as a routing decision: which pool a new request starts in, and
where it decodes.

With prefill-only replicas (`shunter serve --prefill-replicas K`), a request whose prompt has
more than `threshold_tokens` tokens not cached on any decode replica starts on a prefill replica
(chosen by the same policy, over the prefill pool: `LoadIndex.prefill`), so that its long
prefill never shares a step with other requests' decodes; after its first token the router
hands it off, with its KV, to the decode replica `decode_target` names (`router/core/handoff.py`,
on the live-migration path). Shorter prompts, and prompts mostly cached on a decode replica
(its prefill is short there), start on a decode replica. With no healthy prefill replica every
request starts on a decode replica; with no healthy decode replica, on a prefill replica, where
it then decodes too: the split degrades to one pool, never to a refusal.

The prompt's cached part is known only to policies that hash prompts (`needs_prefix`); under the
others the whole prompt counts as uncached.
"""
from __future__ import annotations

from typing import Callable, Sequence

from shunter.errors import ReplicaUnavailable
from shunter.router.routing.load import LoadReport, RoutingRequest
from shunter.router.routing.load_index import LoadIndex
from shunter.router.routing.policies import RoutingPolicy
from shunter.router.routing.prefix_index import PrefixIndex

DEFAULT_THRESHOLD_TOKENS = 1024


class Disaggregated(RoutingPolicy):
    def __init__(self, inner: RoutingPolicy, index: PrefixIndex, threshold_tokens: int) -> None:
        if threshold_tokens < 1:
            raise ValueError(f"prefill threshold: must be >= 1 token, got {threshold_tokens}")
        self.inner, self.index, self.threshold_tokens = inner, index, threshold_tokens
        self.name, self.needs_prefix = inner.name, inner.needs_prefix

    def uncached_tokens(self, request: RoutingRequest, cached_on: Callable[[str], bool]) -> int:
        """The prompt's tokens past the longest prefix a decode replica (`cached_on`) holds."""
        if not request.block_hashes:
            return request.num_prompt_tokens
        depth = max((d for rid, d in self.index.match(request.block_hashes).items() if cached_on(rid)), default=0)
        return max(0, request.num_prompt_tokens - depth * request.block_size)

    def choose(self, loads: LoadIndex, request: RoutingRequest) -> str:
        prefill = loads.prefill
        if prefill is not None and prefill.least() is not None:
            if self.uncached_tokens(request, lambda rid: _healthy_in(loads, rid)) > self.threshold_tokens:
                return self.inner.choose(prefill, request)
            try:
                return self.inner.choose(loads, request)
            except ReplicaUnavailable:  # no decode replica: the prefill pool runs it all
                return self.inner.choose(prefill, request)
        return self.inner.choose(loads, request)

    def select(self, replicas: Sequence[LoadReport], request: RoutingRequest) -> str:
        """`choose` by scanning the reports (the reference `choose` is checked against)."""
        prefill = [r for r in replicas if r.prefill_only]
        decode = [r for r in replicas if not r.prefill_only]
        if any(r.healthy for r in prefill):
            healthy_decode = {r.replica_id for r in decode if r.healthy}
            if self.uncached_tokens(request, healthy_decode.__contains__) > self.threshold_tokens \
                    or not healthy_decode:
                return self.inner.select(prefill, request)
        return self.inner.select(decode, request)

    def decode_target(self, loads: LoadIndex, request: RoutingRequest) -> str | None:
        """Where a request prefilled on a prefill replica decodes (`request` describes its prompt
        and the tokens it made); None while no decode replica is healthy (it decodes where it is)."""
        if loads.least() is None:
            return None
        return self.inner.choose(loads, request)


def _healthy_in(loads: LoadIndex, replica_id: str) -> bool:
    report = loads.report(replica_id)
    return report is not None and report.healthy
