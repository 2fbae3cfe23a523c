"""Which replica holds which cached block, learned from the replicas' cache events.

Block hashes are chained (a block's hash covers every token before it), so a replica that holds
block k of a prompt's chain and every block before it has the first k blocks of that prompt
cached. The index is a hint: events arrive late and a replica may evict at any time, so a wrong
guess only costs a recompute, never a wrong token.

A replica with a CPU tier (`--cpu-kv-gib`) reports which blocks it holds there too. A block is
held if it is in either tier; `credited` weighs the blocks only in the CPU tier less (they must be
loaded back first), walking the chain as the replica's own lookup does: its device part, then
the CPU part after it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol


class CacheEventLike(Protocol):
    kind: str
    block_hash: int
    tier: str


@dataclass
class PrefixIndex:
    holders: dict[int, set[str]] = field(default_factory=dict)  # block hash -> replica ids (either tier)
    by_replica: dict[str, set[int]] = field(default_factory=dict)  # replica id -> block hashes on its device
    cpu_by_replica: dict[str, set[int]] = field(default_factory=dict)  # replica id -> hashes in its CPU tier
    num_cpu_entries: int = 0  # 0: no replica reported a CPU tier, and every block counts whole

    def apply(self, replica_id: str, events: Iterable[CacheEventLike]) -> None:
        device = self.by_replica.setdefault(replica_id, set())
        cpu = self.cpu_by_replica.setdefault(replica_id, set())
        for event in events:
            h, on_cpu = event.block_hash, event.tier == "cpu"
            held, other = (cpu, device) if on_cpu else (device, cpu)
            if event.kind == "stored":
                self.holders.setdefault(h, set()).add(replica_id)
                if on_cpu and h not in cpu:
                    self.num_cpu_entries += 1
                held.add(h)
            elif event.kind == "evicted" and h in held:
                held.discard(h)
                self.num_cpu_entries -= on_cpu
                if h not in other:
                    self._drop(replica_id, h)

    def _drop(self, replica_id: str, block_hash: int) -> None:
        owners = self.holders.get(block_hash)
        if owners is not None:
            owners.discard(replica_id)
            if not owners:
                del self.holders[block_hash]

    def forget(self, replica_id: str) -> None:
        """A replica died or restarted: its cache is gone."""
        cpu = self.cpu_by_replica.pop(replica_id, set())
        self.num_cpu_entries -= len(cpu)
        for block_hash in self.by_replica.pop(replica_id, set()) | cpu:
            self._drop(replica_id, block_hash)

    def credited(self, block_hashes: list[int], cpu_credit: float) -> dict[str, float]:
        """Each holder's leading blocks of the chain, a block only in its CPU tier counting
        `cpu_credit`: its device part, then the CPU part that continues it (replicas credited
        nothing are absent). Linear in the matched blocks of each holder."""
        out: dict[str, float] = {}
        for replica_id, depth in self.match(block_hashes).items():
            device = self.by_replica.get(replica_id, set())
            cpu = self.cpu_by_replica.get(replica_id, set())
            d = 0
            while d < depth and block_hashes[d] in device:
                d += 1
            c = d
            while c < depth and block_hashes[c] in cpu:
                c += 1
            credit = d + cpu_credit * (c - d)
            if credit > 0:  # with cpu_credit 0 a replica holding the prefix only in its CPU tier is no holder
                out[replica_id] = credit
        return out

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
