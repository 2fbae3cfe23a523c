"""The second tier of the prefix cache: copies of published device blocks in the CPU pool.

A device block that the prefix cache publishes is queued for a copy to a CPU block (write-
through): the copies ride with the next step's swap-outs, a bounded number a step, so they never
wait on their own and a burst of prefill cannot flood the link. The copy outlives the device
block: when the device evicts it, a later prompt that reaches past the device's part of its
chain finds the rest here and loads it back instead of computing it; the load runs beside the
steps, and the request waits for it in its seat (`RequestStatus.LOADING`), or computes the tokens
after all when it takes too long (`replica/kv_loads.py`). The CPU pool is shared with swapping:
a swap-out takes free CPU blocks first and then evicts cached copies, least recently used first,
never one an offload of the same step writes or a load in flight reads.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from shunter.replica.engine_protocol import CacheEvent

MAX_OFFLOADS_PER_STEP = 64  # device -> CPU block copies a step carries at most
MAX_BACKLOG = 4 * MAX_OFFLOADS_PER_STEP  # published blocks waiting for a copy; older ones are dropped


@dataclass
class CpuTierStats:
    offloaded_blocks: int = 0  # device -> CPU copies made
    loaded_blocks: int = 0  # CPU -> device loads made for prefix hits
    hit_tokens: int = 0  # prompt tokens served from the CPU tier
    load_timeouts: int = 0  # loads given up on: their requests computed those tokens instead
    evicted_blocks: int = 0  # CPU copies dropped for room


@dataclass
class CpuPrefixCache:
    """Which CPU blocks hold a copy of which block hash, in LRU order (bookkeeping only)."""

    # hash -> (CPU block, tokens), least recently used first
    entries: OrderedDict[int, tuple[int, tuple[int, ...]]] = field(default_factory=OrderedDict)
    # CPU blocks a copy of this step writes (an offload): not evictable until the runner has run
    # the step's copies (two copies of one step into one block would race).
    busy: set[int] = field(default_factory=set)
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
        return len(self.entries) - len(self.busy) - (len(self.reading) - len(self.dropped))  # dropped: all read

    def evict_one(self) -> int | None:
        """Drop the least recently used copy no copy touches; its CPU block."""
        for block_hash, (cpu_block, _) in self.entries.items():
            if cpu_block not in self.busy and cpu_block not in self.reading:
                del self.entries[block_hash]
                self.stats.evicted_blocks += 1
                self.events.append(CacheEvent("evicted", block_hash, "cpu"))
                return cpu_block
        return None
