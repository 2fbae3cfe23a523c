"""Block pool and KV cache manager: ref counts, prefix hits, LRU eviction, no leaks (tier 1)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shunter import SamplingParams
from shunter.replica.block_hash import block_hashes
from shunter.replica.block_pool import BlockPool
from shunter.replica.kv_cache_manager import KVCacheManager
from shunter.replica.request import Request


def req(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens, SamplingParams(), arrival_time=0.0)


def compute(kv: KVCacheManager, r: Request, n: int) -> None:
    assert kv.allocate(r, n)
    r.num_computed_tokens += n
    kv.cache_computed_blocks(r)


def test_allocation_and_ref_counts():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = req("a", list(range(10)))
    compute(kv, a, 10)
    assert len(kv.blocks_of("a")) == 3 and kv.num_free_blocks == 5
    b = req("b", list(range(8)) + [99])
    hit = kv.find_prefix(b)
    assert hit.num_tokens == 8 and hit.block_ids == kv.blocks_of("a")[:2]
    assert kv.allocate(b, 1, hit)
    assert [kv.pool.blocks[i].ref_count for i in hit.block_ids] == [2, 2]
    kv.free(a)
    assert [kv.pool.blocks[i].ref_count for i in hit.block_ids] == [1, 1]
    kv.free(b)
    assert kv.num_free_blocks == 8 and kv.num_blocks_cached() == 2


def test_a_hit_is_hashed_once_by_its_lookup_and_its_chain_goes_on_from_there(monkeypatch):
    from shunter.replica import block_hash, kv_cache_manager

    kv = KVCacheManager(num_blocks=16, block_size=4)
    compute(kv, req("a", list(range(12)) + [50]), 13)
    calls = []  # the tokens of each block hashed: one at a time by a lookup, a chunk's at once when published
    monkeypatch.setattr(kv_cache_manager, "hash_block",
                        lambda parent, tokens: calls.append(tuple(tokens)) or block_hash.hash_block(parent, tokens))
    monkeypatch.setattr(kv_cache_manager, "block_hashes", lambda tokens, size, parent: calls.extend(
        tuple(tokens[i:i + size]) for i in range(0, len(tokens) // size * size, size))
        or block_hash.block_hashes(tokens, size, parent))
    b = req("b", list(range(12)) + [60, 61, 62, 63, 64])
    hit = kv.find_prefix(b)  # blocks 0-2 found, block 3 ([60..63]) looked up and missed
    assert hit.num_tokens == 12 and len(calls) == 4
    assert kv.allocate(b, 5, hit)
    b.num_computed_tokens += 5
    kv.cache_computed_blocks(b)
    assert calls[4:] == [(60, 61, 62, 63)]  # only block 3 hashed again: its lookup missed, so it is published now
    assert kv.block_hashes["b"] == block_hashes(b.prompt_token_ids, 4)
    assert kv.pool.cached[kv.block_hashes["b"][3]] == kv.blocks_of("b")[3]


def test_a_hit_needs_the_same_tokens_not_just_the_same_length():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    compute(kv, req("a", [1, 2, 3, 4, 5]), 5)
    assert kv.find_prefix(req("b", [1, 2, 3, 5, 5])).num_tokens == 0
    assert kv.find_prefix(req("c", [1, 2, 3, 4, 7])).num_tokens == 4


def test_freed_cached_blocks_are_evicted_least_recently_used_first():
    kv = KVCacheManager(num_blocks=4, block_size=2)
    old, new = req("old", [1, 2, 3]), req("new", [7, 8, 9])
    compute(kv, old, 3)
    compute(kv, new, 3)
    kv.free(old)
    kv.free(new)
    events = kv.drain_events()
    assert [e.kind for e in events] == ["stored", "stored"]
    compute(kv, req("x", [5, 5, 5, 5, 5]), 5)  # 3 blocks: 2 uncached first, then the oldest cached one
    assert kv.find_prefix(req("o", [1, 2, 3])).num_tokens == 0
    assert kv.find_prefix(req("n", [7, 8, 9])).num_tokens == 2
    evicted = [e for e in kv.drain_events() if e.kind == "evicted"]
    assert [e.block_hash for e in evicted] == block_hashes([1, 2], 2)


def test_allocation_that_does_not_fit_changes_nothing():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    r = req("a", list(range(20)))
    assert not kv.allocate(r, 20)
    assert kv.num_free_blocks == 2 and kv.blocks_of("a") == []


def test_a_decode_that_starts_a_block_appends_one_free_block_or_nothing():
    """`append_block`, the scheduler's fast path for a decode at a block boundary: the block
    `allocate` would give, from the free queue's LRU end (evicting a cached prefix), or False."""
    kv = KVCacheManager(num_blocks=3, block_size=4)
    a, b = req("a", list(range(8))), req("b", list(range(100, 104)))
    compute(kv, a, 8)
    compute(kv, b, 4)
    kv.free(b)  # its block stays cached, the only free one
    table = kv.block_tables["a"]
    assert kv.append_block(table) and len(table) == 3 and kv.num_free_blocks == 0
    assert kv.num_blocks_cached() == 0 and len(kv.pool.cached) == 2  # b's prefix evicted for it; a's stay
    assert not kv.append_block(table) and len(table) == 3


def test_swap_out_and_in_round_trip():
    kv = KVCacheManager(num_blocks=4, block_size=4, num_cpu_blocks=4)
    r = req("a", list(range(8)))
    compute(kv, r, 8)
    device_blocks = kv.blocks_of("a")
    pairs = kv.swap_out(r)
    assert [p[0] for p in pairs] == device_blocks and kv.num_free_blocks == 4 and kv.num_free_cpu_blocks == 2
    back = kv.swap_in(r)
    assert [p[0] for p in back] == [p[1] for p in pairs]
    kv.swaps_done()
    assert kv.num_free_cpu_blocks == 4


def test_cpu_blocks_read_by_a_swap_in_are_not_reused_by_a_swap_out_of_the_same_step():
    """The runner copies a step's swap-outs before its swap-ins (so a device block a swap-out
    frees can be refilled by a swap-in). A CPU block freed by a swap-in must therefore not be
    handed to a swap-out in the same step: the swap-out would overwrite it before it was read."""
    kv = KVCacheManager(num_blocks=4, block_size=4, num_cpu_blocks=1)
    a, b = req("a", list(range(4))), req("b", list(range(10, 14)))
    compute(kv, a, 4)
    kv.swap_out(a)
    kv.swaps_done()
    compute(kv, b, 4)
    (cpu_read, _), = kv.swap_in(a)  # step N: a comes back ...
    assert not kv.can_swap_out(b) and kv.num_free_cpu_blocks == 0  # ... so b cannot take its CPU block
    kv.check_invariants({"a", "b"})
    kv.swaps_done()  # the runner has copied step N
    assert kv.can_swap_out(b)
    (_, cpu_written), = kv.swap_out(b)
    assert cpu_written == cpu_read


def test_block_pool_rejects_an_empty_pool():
    import pytest

    with pytest.raises(ValueError, match="num_kv_blocks"):
        BlockPool(0)


ops = st.lists(
    st.tuples(st.sampled_from(["add", "step", "finish", "abort", "preempt", "swap", "copied"]), st.integers(0, 5), st.integers(1, 40)),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, caching=st.booleans())
def test_any_sequence_of_operations_leaks_no_block(ops, caching):
    kv = KVCacheManager(num_blocks=16, block_size=4, num_cpu_blocks=8, enable_prefix_caching=caching)
    live: dict[str, Request] = {}
    swapped: set[str] = set()
    counter = 0
    for op, which, n in ops:
        ids = sorted(live)
        target = live[ids[which % len(ids)]] if ids else None
        if op == "add":
            counter += 1
            live[f"r{counter}"] = req(f"r{counter}", [which] * 8 + list(range(n)))
        elif op == "copied":  # the runner executed the step's swaps
            kv.swaps_done()
        elif target is None:
            continue
        elif op == "step" and target.request_id not in swapped:
            todo = min(n, target.num_tokens - target.num_computed_tokens)
            if todo > 0:
                hit = kv.find_prefix(target) if not kv.blocks_of(target.request_id) and target.num_computed_tokens == 0 else None
                if kv.allocate(target, todo, hit):
                    target.num_computed_tokens += todo
                    kv.cache_computed_blocks(target)
            elif todo == 0:
                target.output_token_ids.append(n)
        elif op in ("finish", "abort"):
            if target.request_id in swapped:
                kv.free_swapped(target)
                swapped.discard(target.request_id)
            kv.free(target)
            del live[target.request_id]
        elif op == "preempt" and target.request_id not in swapped:
            kv.free(target)
            target.num_computed_tokens = 0
        elif op == "swap":
            if target.request_id in swapped:
                if kv.can_swap_in(target):
                    kv.swap_in(target)
                    swapped.discard(target.request_id)
            elif kv.blocks_of(target.request_id) and kv.can_swap_out(target):
                kv.swap_out(target)
                swapped.add(target.request_id)
        kv.check_invariants(set(live))
    for r in list(live.values()):
        if r.request_id in swapped:
            kv.free_swapped(r)
        kv.free(r)
    kv.swaps_done()
    kv.check_invariants(set())
    assert kv.num_free_blocks == 16 and kv.num_free_cpu_blocks == 8
    assert all(b.ref_count == 0 for b in kv.pool.blocks)
