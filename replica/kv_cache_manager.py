"""Which KV blocks each request holds, on the device and (when swapped out) on the CPU.

The manager only does bookkeeping; moving bytes is the model runner's job, driven by the
swap mappings the scheduler hands it. With `cpu_prefix_cache` the CPU pool also holds copies of
published blocks, a second tier of the prefix cache (`replica/cpu_prefix_cache.py`).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from shunter.mathutil import cdiv
from shunter.replica.block_hash import ROOT_HASH, block_hashes, hash_block
from shunter.replica.block_pool import BlockPool, CacheEvent
from shunter.replica.cpu_prefix_cache import MAX_OFFLOADS_IN_FLIGHT, MAX_OFFLOADS_PER_STEP, CopyTicket, CpuPrefixCache
from shunter.replica.request import Request


@dataclass
class PrefixHit:
    block_ids: list[int]  # cached device blocks, from the first
    num_tokens: int  # tokens of both tiers
    cpu_block_ids: list[int] = field(default_factory=list)  # CPU copies of the blocks after them, to load
    # The hashes of `block_ids`, worked out by the lookup: the request's chain starts with them, so
    # its published blocks are not hashed again (`cache_computed_blocks` goes on from there).
    block_hashes: list[int] = field(default_factory=list)


@dataclass(eq=False)
class PendingLoad:
    """A request's prefix blocks on their way from the CPU tier into fresh device blocks."""

    request: Request
    pairs: list[tuple[int, int]]  # (CPU block, device block), the tail of the request's table
    device_tokens: int  # what its hit found on the device: all it keeps if the load is given up
    # Given up on (timed out, or its request left): the device blocks are out of the request's
    # table but stay held until the copy lands, so no later write races with it.
    abandoned: bool = False


@dataclass(eq=False)
class PendingOffload:
    """One step's write-through copies to the CPU tier, from their start until they land."""

    pairs: list[tuple[int, int]]  # (device block, CPU block)
    hashes: list[int]  # each device block's hash when its copy started: a block since handed on has another
    ticket: CopyTicket | None = None  # None until the runner has started the copies


@dataclass
class Reservation:
    block_ids: list[int]
    filled: int = 0  # blocks 0..filled-1 hold the migrating request's KV
    touched_at: float = 0.0  # when the migration last did something with it (the watchdog's clock)


@dataclass
class KVCacheManager:
    num_blocks: int
    block_size: int = 16
    num_cpu_blocks: int = 0
    enable_prefix_caching: bool = True
    cpu_prefix_cache: bool = False  # keep copies of published blocks in the CPU pool (a second tier)
    pool: BlockPool = field(init=False)
    block_tables: dict[str, list[int]] = field(init=False, default_factory=dict)
    # Hashes of each request's full blocks, grown as tokens are computed.
    block_hashes: dict[str, list[int]] = field(init=False, default_factory=dict)
    cpu_free: list[int] = field(init=False)
    cpu_tables: dict[str, list[int]] = field(init=False, default_factory=dict)
    # CPU blocks this step's swap-ins read: free again only once the runner has copied them
    # (`swaps_done`), so no swap-out of the same step can overwrite them first.
    cpu_being_read: list[int] = field(init=False, default_factory=list)
    # Blocks held for requests migrating in (live migration's pre-allocation), by request id: a
    # reservation's first `filled` blocks hold KV already copied in; it becomes the request's
    # block table when the migration commits, or is freed when it aborts.
    reservations: dict[str, Reservation] = field(init=False, default_factory=dict)
    prefix_queries: int = 0  # prompt tokens looked up
    prefix_hits: int = 0  # of which found cached
    # The CPU tier: None without `cpu_prefix_cache`. Loads of its copies into fresh device blocks
    # wait in `cpu_loads` for the step (the scheduler takes them with `take_cpu_loads`).
    cpu_tier: CpuPrefixCache | None = field(init=False, default=None)
    cpu_loads: list[tuple[int, int]] = field(init=False, default_factory=list)  # (cpu, device)
    # Loads not landed yet: those whose requests wait for them, by request (the object: an id may
    # come back as a new request), and those given up on, whose blocks wait for the copy to land.
    loads: dict[Request, PendingLoad] = field(init=False, default_factory=dict)
    abandoned_loads: set[PendingLoad] = field(init=False, default_factory=set)
    # Write-through copies to the CPU tier not landed yet, oldest first (they land in order). The
    # device blocks the newest step's copies read are held until the runner has started them
    # (`swaps_done`), so that step cannot hand them on; a later step that does must run after the
    # copies have read them (`offload_reads_reused`).
    offloads: deque[PendingOffload] = field(init=False, default_factory=deque)
    offload_holds: list[int] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        self.pool = BlockPool(self.num_blocks, self.enable_prefix_caching)
        self.cpu_free = list(range(self.num_cpu_blocks - 1, -1, -1))
        if self.cpu_prefix_cache and self.enable_prefix_caching and self.num_cpu_blocks:
            self.cpu_tier = CpuPrefixCache()

    # ---- device blocks -------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    def blocks_of(self, request_id: str) -> list[int]:
        return self.block_tables.get(request_id, [])

    def find_prefix(self, request: Request) -> PrefixHit:
        """Longest run of cached full blocks at the start of the request's tokens.

        At least one token is always left to compute, since the step must produce logits; none
        is skipped while the prompt's log-probabilities are still to be computed."""
        if not self.enable_prefix_caching or request.needs_prompt_logprobs:
            return PrefixHit([], 0)
        max_blocks = (request.num_tokens - 1) // self.block_size
        ids: list[int] = []
        cpu_ids: list[int] = []
        hashes: list[int] = []
        parent = ROOT_HASH
        for i in range(max_blocks):
            tokens = tuple(request.token_slice(i * self.block_size, (i + 1) * self.block_size))
            parent = hash_block(parent, tokens)
            block_id = None if cpu_ids else self.pool.lookup(parent, tokens)
            if block_id is not None:
                ids.append(block_id)
                hashes.append(parent)
                continue
            cpu_id = self.cpu_tier.lookup(parent, tokens) if self.cpu_tier is not None else None
            if cpu_id is None:
                break
            cpu_ids.append(cpu_id)  # the device's part of the chain ended; the CPU tier holds more
        return PrefixHit(ids, (len(ids) + len(cpu_ids)) * self.block_size, cpu_ids, hashes)

    def cached_prefix_blocks(self, hashes: list[int]) -> int:
        """About how many of `hashes` (a prompt's block hashes, in order) are cached now, from
        the first on: a look-ahead for ordering, not verified like a hit. A chain is cached and
        evicted mostly whole, tail first, so the cached part is taken to be a prefix of it and
        its end found by bisection (a few lookups for a prompt of hundreds of blocks)."""
        cached = self.pool.cached
        lo, hi = 0, len(hashes)  # hashes[:lo] cached; hashes[hi:] not
        while lo < hi:
            mid = (lo + hi) // 2
            if hashes[mid] in cached:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def blocks_needed(self, request: Request, num_new_tokens: int, hit: PrefixHit | None = None) -> int:
        have = len(self.blocks_of(request.request_id)) + (len(hit.block_ids) if hit else 0)
        computed = request.num_computed_tokens + (hit.num_tokens if hit else 0)
        return max(0, cdiv(computed + num_new_tokens, self.block_size) - have)

    def can_allocate(self, request: Request, num_new_tokens: int, hit: PrefixHit | None = None) -> bool:
        need = self.blocks_needed(request, num_new_tokens, hit)
        # Reviving a free cached block takes it out of the free queue too.
        revived = sum(1 for b in (hit.block_ids if hit else []) if self.pool.blocks[b].ref_count == 0)
        return need + revived <= self.pool.num_free

    def allocate(self, request: Request, num_new_tokens: int, hit: PrefixHit | None = None) -> bool:
        """Give the request blocks for `num_new_tokens` more tokens; False (and no change) if they don't fit."""
        if hit is None:  # the common case, a decode inside its last block: nothing to take
            table = self.block_tables.get(request.request_id)
            if table is not None and len(table) * self.block_size >= request.num_computed_tokens + num_new_tokens:
                return True
        if not self.can_allocate(request, num_new_tokens, hit):
            return False
        table = self.block_tables.setdefault(request.request_id, [])
        loads = hit.cpu_block_ids if hit is not None else []
        if hit is not None and hit.num_tokens:
            assert not table, "a prefix hit only applies to a request that holds no blocks"
            self.pool.touch(hit.block_ids)
            table.extend(hit.block_ids)
            if hit.block_hashes:  # published already, under these names
                self.block_hashes[request.request_id] = list(hit.block_hashes)
            request.num_computed_tokens += hit.num_tokens
        new = self.pool.allocate(self.blocks_needed(request, num_new_tokens))
        if loads:  # the first new blocks take the CPU tier's copies; the request waits for them
            assert self.cpu_tier is not None
            pairs = list(zip(loads, new))
            self.cpu_loads.extend(pairs)
            device_tokens = len(hit.block_ids) * self.block_size  # type: ignore[union-attr]
            self.loads[request] = PendingLoad(request, pairs, device_tokens)
            self.cpu_tier.pin(loads)
            self.cpu_tier.stats.loaded_blocks += len(loads)
            self.cpu_tier.stats.hit_tokens += len(loads) * self.block_size
        table.extend(new)
        return True

    def append_block(self, table: list[int]) -> bool:
        """One more block at the end of a running request's table (`block_tables`' list): a
        decode that starts a block. False, and no change, when no block is free."""
        if not self.pool.free_queue:
            return False
        table.extend(self.pool.allocate(1))
        return True

    def cache_computed_blocks(self, request: Request) -> None:
        """Hash and publish every block that is now full of computed tokens."""
        if not self.enable_prefix_caching:
            return
        num_full = request.num_computed_tokens // self.block_size
        hashes = self.block_hashes.get(request.request_id)  # every scheduled request, every step: no
        if hashes is None:                                   # setdefault, whose default list is built each call
            hashes = self.block_hashes[request.request_id] = []
        if len(hashes) == num_full:  # most steps fill no block
            return
        table, bs, first = self.block_tables[request.request_id], self.block_size, len(hashes)
        # The blocks filled since the last call (a prefill chunk's: up to a hundred), hashed from
        # one conversion of their tokens to bytes.
        tokens = tuple(request.token_slice(first * bs, num_full * bs))
        new = block_hashes(tokens, bs, hashes[-1] if hashes else ROOT_HASH)
        hashes += new
        cache, tier = self.pool.cache, self.cpu_tier
        for k, (block_id, block_hash) in enumerate(zip(table[first:num_full], new)):
            block_tokens = tokens[k * bs:(k + 1) * bs]
            if cache(block_id, block_hash, block_tokens) and tier is not None:
                tier.backlog.append((block_id, block_hash, block_tokens))

    def free(self, request: Request) -> None:
        """Release the request's device blocks (tail first: the tail is least likely to be shared);
        those a load still writes are released when it lands."""
        if request in self.loads:
            self.abandon_load(request)
        table = self.block_tables.pop(request.request_id, [])
        self.pool.release(table[::-1])
        self.block_hashes.pop(request.request_id, None)

    def record_prefix_lookup(self, num_prompt_tokens: int, num_hit_tokens: int) -> None:
        self.prefix_queries += num_prompt_tokens
        self.prefix_hits += num_hit_tokens

    # ---- loads from the CPU tier ------------------------------------------------------------
    def load_landed(self, load: PendingLoad) -> bool:
        """A load has landed: its CPU blocks may be evicted again. True if its request's blocks
        now hold its prefix; False if it was given up on (its device blocks are freed now)."""
        self.cpu_free.extend(self.cpu_tier.unpin([c for c, _ in load.pairs]))  # type: ignore[union-attr]
        if load.abandoned:
            self.abandoned_loads.remove(load)
            self.pool.release([d for _, d in reversed(load.pairs)])
            return False
        del self.loads[load.request]
        return True

    def abandon_load(self, request: Request, timed_out: bool = False) -> int:
        """Give up on the request's load: its table keeps only its device hit, which is all it has
        computed; the blocks the copy writes stay held until it lands. The tokens it lost, which
        a timed-out load's request computes instead (counted as misses, not hits); the copies a
        timed-out load reads leave the CPU tier, so that no request waits on them again."""
        load = self.loads.pop(request)
        load.abandoned = True
        self.abandoned_loads.add(load)
        table, first, n = self.block_tables[request.request_id], load.device_tokens // self.block_size, len(load.pairs)
        assert table[first:first + n] == [d for _, d in load.pairs], "the load's blocks follow the device hit's"
        self.pool.release(table[first + n:][::-1])  # blocks taken beyond them (none where it waited for them)
        del table[first:]
        lost = request.num_computed_tokens - load.device_tokens
        request.num_computed_tokens = load.device_tokens
        if timed_out:
            self.cpu_tier.drop([c for c, _ in load.pairs])  # type: ignore[union-attr]
            stats = self.cpu_tier.stats  # type: ignore[union-attr]
            stats.load_timeouts += 1
            stats.hit_tokens -= lost
            self.prefix_hits -= lost
        return lost

    # ---- reservations for requests migrating in -------------------------------------------
    def reserve(self, request_id: str, num_blocks: int, now: float) -> bool:
        """Hold `num_blocks` device blocks in all for `request_id` (growing what it holds); False,
        with nothing changed, when the pool cannot spare them. Taking a free block may evict a
        cached prefix, as any allocation does."""
        held = self.reservations.get(request_id)
        more = num_blocks - (len(held.block_ids) if held else 0)
        if more > self.pool.num_free:
            return False
        if held is None:
            held = self.reservations[request_id] = Reservation([])
        if more > 0:
            held.block_ids.extend(self.pool.allocate(more))
        held.touched_at = now
        return True

    def release_reservation(self, request_id: str) -> int:
        """Free a reservation (its migration aborted or timed out); the blocks it held."""
        held = self.reservations.pop(request_id, None)
        if held is None:
            return 0
        self.pool.release(held.block_ids[::-1])
        return len(held.block_ids)

    def adopt_reservation(self, request: Request, num_blocks: int) -> list[int]:
        """The reservation's first `num_blocks` become the request's block table; the rest are freed."""
        held = self.reservations.pop(request.request_id)
        keep, spare = held.block_ids[:num_blocks], held.block_ids[num_blocks:]
        self.pool.release(spare[::-1])
        self.block_tables[request.request_id] = keep
        return keep

    def expired_reservations(self, now: float, max_idle_s: float) -> list[str]:
        return [rid for rid, held in self.reservations.items() if now - held.touched_at > max_idle_s]

    # ---- CPU swap ------------------------------------------------------------------------
    @property
    def num_free_cpu_blocks(self) -> int:
        """Free CPU blocks, counting cached copies a swap-out may evict."""
        return len(self.cpu_free) + (self.cpu_tier.num_evictable if self.cpu_tier is not None else 0)

    def _take_cpu_block(self) -> int | None:
        if self.cpu_free:
            return self.cpu_free.pop()
        return self.cpu_tier.evict_one() if self.cpu_tier is not None else None

    def can_swap_out(self, request: Request) -> bool:
        return len(self.blocks_of(request.request_id)) <= self.num_free_cpu_blocks

    def swap_out(self, request: Request) -> list[tuple[int, int]]:
        """Move the request's blocks to the CPU pool; returns (device block, cpu block) pairs to copy."""
        assert request not in self.loads, "a request whose blocks are still loading is not swapped out"
        table = self.block_tables.pop(request.request_id)
        cpu_ids = [self._take_cpu_block() for _ in table]
        assert None not in cpu_ids, "swap_out without can_swap_out"
        self.cpu_tables[request.request_id] = cpu_ids
        self.pool.release(table[::-1])
        self.block_hashes.pop(request.request_id, None)
        return list(zip(table, cpu_ids))

    def can_swap_in(self, request: Request) -> bool:
        return len(self.cpu_tables[request.request_id]) <= self.pool.num_free

    def swap_in(self, request: Request) -> list[tuple[int, int]]:
        """Bring a swapped request back; returns (cpu block, device block) pairs to copy."""
        cpu_ids = self.cpu_tables.pop(request.request_id)
        table = self.pool.allocate(len(cpu_ids))
        self.block_tables[request.request_id] = table
        self.cpu_being_read.extend(cpu_ids)
        return list(zip(cpu_ids, table))

    def swaps_done(self, offloads: CopyTicket | None = None) -> None:
        """The runner has executed the step's swaps and started its offloads, which land when
        `offloads` says (None: landed now): the CPU blocks swap-ins read are free, and the device
        blocks the offloads read may be handed on (a step that does waits for the reads)."""
        self.cpu_free.extend(self.cpu_being_read)
        self.cpu_being_read.clear()
        if self.offload_holds:
            self.pool.release(self.offload_holds)
            self.offload_holds = []
            self.offloads[-1].ticket = offloads
            if offloads is None:
                self.land_offloads()

    # ---- the CPU tier of the prefix cache ----------------------------------------------------
    def take_cpu_offloads(self, limit: int = MAX_OFFLOADS_PER_STEP) -> list[tuple[int, int]]:
        """(device block, CPU block) copies for up to `limit` published blocks not yet on the CPU
        (fewer while others are in flight), oldest first; ones the device has evicted since are
        skipped (their KV is gone). Taken before the step allocates anything; the device blocks
        are held until the runner has started the copies (`swaps_done`)."""
        tier = self.cpu_tier
        if tier is None or not tier.backlog:
            return []
        limit = min(limit, MAX_OFFLOADS_IN_FLIGHT - len(tier.writing))
        pairs: list[tuple[int, int]] = []
        hashes: list[int] = []
        blocks, entries, writing = self.pool.blocks, tier.entries, tier.writing
        while tier.backlog and len(pairs) < limit:
            block_id, block_hash, tokens = tier.backlog.popleft()
            if blocks[block_id].block_hash != block_hash or block_hash in entries or block_hash in writing:
                continue
            cpu_block = self._take_cpu_block()
            if cpu_block is None:  # the CPU pool is all swapped requests, loads and copies in flight
                tier.backlog.appendleft((block_id, block_hash, tokens))
                break
            writing[block_hash] = (cpu_block, tokens)
            pairs.append((block_id, cpu_block))
            hashes.append(block_hash)
        if pairs:
            held = [d for d, _ in pairs]
            self.pool.touch(held)
            if self.offload_holds:  # taken twice before the runner started any: one step's copies
                self.offloads[-1].pairs += pairs
                self.offloads[-1].hashes += hashes
            else:
                self.offloads.append(PendingOffload(pairs, hashes))
            self.offload_holds += held
        return pairs

    def land_offloads(self) -> None:
        """Bring the copies that have landed into the CPU tier, oldest first."""
        offloads, tier = self.offloads, self.cpu_tier
        while offloads and not (offloads[0] is offloads[-1] and self.offload_holds):  # the newest: not started
            ticket = offloads[0].ticket
            if ticket is not None and not ticket.done():
                return
            tier.landed(offloads.popleft().hashes)  # type: ignore[union-attr]

    def offload_reads_reused(self) -> bool:
        """Whether this step hands on a device block that a copy in flight may not have read yet
        (then the runner runs the step's writes after those copies)."""
        blocks = self.pool.blocks
        return any(blocks[d].block_hash != h for o in self.offloads if o.ticket is not None
                   for (d, _), h in zip(o.pairs, o.hashes))

    def take_cpu_loads(self) -> list[tuple[int, int]]:
        """(CPU block, device block) loads of this step's prefix hits in the CPU tier."""
        loads, self.cpu_loads = self.cpu_loads, []
        return loads

    def free_swapped(self, request: Request) -> None:
        self.cpu_free.extend(self.cpu_tables.pop(request.request_id, []))

    # ---- accounting ----------------------------------------------------------------------
    def num_blocks_in_use(self) -> int:
        return self.num_blocks - self.pool.num_free

    def num_blocks_cached(self) -> int:
        return self.pool.num_cached_free

    def drain_events(self) -> list[CacheEvent]:
        events = self.pool.drain_events()
        if self.cpu_tier is not None and self.cpu_tier.events:
            events += self.cpu_tier.events
            self.cpu_tier.events = []
        return events

    def check_invariants(self, live_request_ids: set[str]) -> None:
        """Every block is free or held; ref counts equal the number of tables holding it."""
        refs = [0] * self.num_blocks
        for rid, table in self.block_tables.items():
            assert rid in live_request_ids, f"blocks held by unknown request {rid}"
            for b in table:
                refs[b] += 1
        for held in self.reservations.values():
            for b in held.block_ids:
                refs[b] += 1
        for load in self.abandoned_loads:  # out of every table, held by the copy still writing them
            for _, b in load.pairs:
                refs[b] += 1
        for b in self.offload_holds:  # read by this step's copies to the CPU tier
            refs[b] += 1
        for block in self.pool.blocks:
            assert block.ref_count == refs[block.block_id], f"block {block.block_id}: ref {block.ref_count} != {refs[block.block_id]}"
            assert (block.ref_count == 0) == (block.block_id in self.pool.free_queue)
        cached_free = sum(1 for b in self.pool.free_queue if self.pool.blocks[b].block_hash is not None)
        assert cached_free == self.pool.num_cached_free
        held_cpu = sum(len(t) for t in self.cpu_tables.values())
        tier = self.cpu_tier
        cached_cpu = len(tier) + len(tier.dropped) + len(tier.writing) if tier is not None else 0
        assert held_cpu + len(self.cpu_free) + len(self.cpu_being_read) + cached_cpu == self.num_cpu_blocks
