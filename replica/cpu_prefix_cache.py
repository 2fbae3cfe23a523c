"""The second tier of the prefix cache: copies of published device blocks in the CPU pool.

A device block that the prefix cache publishes is queued for a copy to a CPU block (write-
through): a bounded number a step, and a bounded number in flight, so a burst of prefill cannot
flood the link. On a GPU the copies run beside the steps (`replica/kv_offloads.py`). A copy
joins the tier when it has landed; until then its CPU block is being written, so nothing evicts
or reads it. The copy outlives the device block: when the device evicts it, a later prompt that
reaches past the device's part of its chain finds the rest here and loads it back instead of
computing it; the load runs beside the steps, and the request waits for it in its seat
(`RequestStatus.LOADING`), or computes the tokens after all when it takes too long
(`replica/kv_loads.py`). The CPU pool is shared with swapping: a swap-out takes free CPU blocks
first and then evicts cached copies, least recently used first, never one a load in flight reads.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from shunter.replica.engine_protocol import CacheEvent

MAX_OFFLOADS_PER_STEP = 64  # device -> CPU block copies a step starts at most
MAX_OFFLOADS_IN_FLIGHT = 2 * MAX_OFFLOADS_PER_STEP  # copies started and not landed, at most
MAX_BACKLOG = 4 * MAX_OFFLOADS_PER_STEP  # published blocks waiting for a copy; older ones are dropped


class CopyTicket(Protocol):
    """Copies on their way beside the steps (None where a runner makes them within the step)."""

    def done(self) -> bool: ...


@dataclass
class CpuTierStats:
    offloaded_blocks: int = 0  # device -> CPU copies landed
    loaded_blocks: int = 0  # CPU -> device loads made for prefix hits
    hit_tokens: int = 0  # prompt tokens served from the CPU tier
    load_timeouts: int = 0  # loads given up on: their requests computed those tokens instead
    evicted_blocks: int = 0  # CPU copies dropped for room


@dataclass
class CpuPrefixCache:
    """Which CPU blocks hold a copy of which block hash, in LRU order (bookkeeping only)."""

    # hash -> (CPU block, tokens), least recently used first
    entries: OrderedDict[int, tuple[int, tuple[int, ...]]] = field(default_factory=OrderedDict)
    # Copies on their way, by hash: (CPU block, tokens). Not in `entries` until they land, so
    # no load reads and no swap-out evicts a block a copy still writes.
    writing: dict[int, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    # CPU blocks loads read, with how many loads read each: not evictable until those land, which
    # may be steps later (a load runs beside the steps, `replica/kv_loads.py`).
    reading: dict[int, int] = field(default_factory=dict)
    # Copies dropped while a load still reads them (`drop`): free once the last such load lands.
    dropped: set[int] = field(default_factory=set)
    backlog: deque[tuple[int, int, tuple[int, ...]]] = field(default_factory=lambda: deque(maxlen=MAX_BACKLOG))
    stats: CpuTierStats = field(default_factory=CpuTierStats)
    events: list[CacheEvent] = field(default_factory=list)  # tier "cpu", for the router's prefix index

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, block_hash: int, token_ids: tuple[int, ...]) -> int | None:
        """The CPU block holding these tokens (verified, as on the device), marked recently used."""
        entry = self.entries.get(block_hash)
        if entry is None or entry[1] != token_ids:
            return None
        self.entries.move_to_end(block_hash)
        return entry[0]

    def add(self, block_hash: int, cpu_block: int, token_ids: tuple[int, ...]) -> None:
        self.entries[block_hash] = (cpu_block, token_ids)
        self.events.append(CacheEvent("stored", block_hash, "cpu"))

    def landed(self, block_hashes: list[int]) -> None:
        """The copies of these hashes have landed: each joins the tier, most recently used."""
        for block_hash in block_hashes:
            cpu_block, tokens = self.writing.pop(block_hash)
            self.add(block_hash, cpu_block, tokens)
        self.stats.offloaded_blocks += len(block_hashes)

    def pin(self, cpu_blocks: list[int]) -> None:
        """A load reads these blocks from now until it lands (`unpin`)."""
        reading = self.reading
        for b in cpu_blocks:
            reading[b] = reading.get(b, 0) + 1

    def unpin(self, cpu_blocks: list[int]) -> list[int]:
        """The loads of these blocks landed; the blocks that are free now (dropped, read by no load)."""
        reading, freed = self.reading, []
        for b in cpu_blocks:
            left = reading[b] - 1
            if left:
                reading[b] = left
                continue
            del reading[b]
            if b in self.dropped:
                self.dropped.remove(b)
                freed.append(b)
        return freed

    def drop(self, cpu_blocks: list[int]) -> None:
        """Forget the copies in these blocks (a load of them timed out: a prompt that finds them
        again computes them instead of waiting again); each block is free once no load reads it."""
        gone = set(cpu_blocks)
        for block_hash in [h for h, (b, _) in self.entries.items() if b in gone]:
            del self.entries[block_hash]
            self.events.append(CacheEvent("evicted", block_hash, "cpu"))
        self.dropped |= gone

    @property
    def num_evictable(self) -> int:
        return len(self.entries) - (len(self.reading) - len(self.dropped))  # dropped: all read

    def evict_one(self) -> int | None:
        """Drop the least recently used copy no load reads; its CPU block."""
        for block_hash, (cpu_block, _) in self.entries.items():
            if cpu_block not in self.reading:
                del self.entries[block_hash]
                self.stats.evicted_blocks += 1
                self.events.append(CacheEvent("evicted", block_hash, "cpu"))
                return cpu_block
        return None
