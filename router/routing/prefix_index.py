"""Which replica holds which cached block, learned from the replicas' cache events.

Block hashes are chained (a block's hash covers every token before it), so a replica that holds
block k of a prompt's chain and every block before it has the first k blocks of that prompt
cached. The index is a hint: events arrive late and a replica may evict at any time, so a wrong
guess only costs a recompute, never a wrong token.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol


class CacheEventLike(Protocol):
    kind: str
    block_hash: int


@dataclass
class PrefixIndex:
    holders: dict[int, set[str]] = field(default_factory=dict)  # block hash -> replica ids
    by_replica: dict[str, set[int]] = field(default_factory=dict)  # replica id -> block hashes

    def apply(self, replica_id: str, events: Iterable[CacheEventLike]) -> None:
        held = self.by_replica.setdefault(replica_id, set())
        for event in events:
            if event.kind == "stored":
                self.holders.setdefault(event.block_hash, set()).add(replica_id)
                held.add(event.block_hash)
            elif event.kind == "evicted":
                self._drop(replica_id, event.block_hash)
                held.discard(event.block_hash)

    def _drop(self, replica_id: str, block_hash: int) -> None:
        owners = self.holders.get(block_hash)
        if owners is not None:
            owners.discard(replica_id)
            if not owners:
                del self.holders[block_hash]

    def forget(self, replica_id: str) -> None:
        """A replica died or restarted: its cache is gone."""
        for block_hash in self.by_replica.pop(replica_id, set()):
            self._drop(replica_id, block_hash)

    def match(self, block_hashes: list[int]) -> dict[str, int]:
        """Number of leading blocks of the chain each replica holds (replicas with none are absent).

        Walks the chain once, narrowing the set of replicas that hold every block so far; a
        replica's depth is recorded when it drops out. While no one drops out (the usual case:
        a deeper block's holders are a subset of a shallower one's), a step is one subset test
        and allocates nothing."""
        holders = self.holders
        matched: dict[str, int] = {}
        alive: set[str] | frozenset[str] = frozenset()
        depth = 0
        for block_hash in block_hashes:
            owners = holders.get(block_hash)
            if not owners:
                break
            if depth == 0:
                alive = owners  # read only: never mutated below
            elif not alive <= owners:
                kept = alive & owners
                for replica_id in alive - kept:
                    matched[replica_id] = depth
                alive = kept
                if not alive:
                    break
            depth += 1
        for replica_id in alive:
            matched[replica_id] = depth
        return matched

    def deepest(self, block_hashes: list[int]) -> tuple[int, set[str] | frozenset[str]]:
        """(depth, the replicas holding that many leading blocks of the chain): the deepest
        holders only, which is all a longest-prefix choice needs (`match` gives every depth).
        The set is read only."""
        holders = self.holders
        alive: set[str] | frozenset[str] = frozenset()
        depth = 0
        for block_hash in block_hashes:
            owners = holders.get(block_hash)
            if not owners:
                break
            if depth == 0:
                alive = owners
            elif not alive <= owners:
                kept = alive & owners
                if not kept:
                    break
                alive = kept
            depth += 1
        return depth, alive
