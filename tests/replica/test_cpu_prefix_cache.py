"""The prefix cache's CPU tier: published blocks are copied to the CPU pool a bounded number a
step, a prefix the device evicted is found there and loaded into fresh blocks, swap-outs evict
copies least recently used first but never one a copy of the same step reads or writes, and the CPU pool's
accounting holds under swap and cache use together (randomized); on the real model, greedy
tokens equal the reference when blocks come from the CPU tier."""
from __future__ import annotations

import random

import pytest

from shunter import LLM, SamplingParams
from shunter.replica.cpu_prefix_cache import CpuPrefixCache
from shunter.replica.engine_config import EngineConfig
from shunter.replica.kv_cache_manager import KVCacheManager
from shunter.replica.request import Request
from tests.replica.test_kv_cache_manager import compute, req


def tiered(num_blocks: int = 4, num_cpu_blocks: int = 4) -> KVCacheManager:
    return KVCacheManager(num_blocks=num_blocks, block_size=4, num_cpu_blocks=num_cpu_blocks, cpu_prefix_cache=True)


def test_published_blocks_are_copied_to_the_cpu_a_bounded_number_a_step():
    kv = tiered(num_blocks=8, num_cpu_blocks=8)
    a = req("a", list(range(13)))
    compute(kv, a, 13)  # 3 full blocks published
    first = kv.take_cpu_offloads(limit=2)
    assert [d for d, _ in first] == kv.blocks_of("a")[:2]
    assert [d for d, _ in kv.take_cpu_offloads(limit=2)] == kv.blocks_of("a")[2:3]
    assert kv.take_cpu_offloads() == [] and len(kv.cpu_tier) == 3
    kv.check_invariants({"a"})


def test_a_block_evicted_from_the_device_before_its_copy_is_not_copied():
    kv = tiered(num_blocks=3)
    compute(kv, a := req("a", list(range(8))), 8)
    kv.free(a)
    compute(kv, req("b", list(range(100, 112))), 12)  # takes all 3 blocks: a's are evicted
    pairs = kv.take_cpu_offloads()
    assert len(pairs) == 3 and all(d in kv.blocks_of("b") for d, _ in pairs)  # b's, not a's stale ones


def test_a_prefix_evicted_from_the_device_is_loaded_from_the_cpu():
    kv = tiered(num_blocks=4)
    prompt = list(range(12))
    compute(kv, a := req("a", prompt), 12)
    cpu_of = {d: c for d, c in kv.take_cpu_offloads()}
    kv.free(a)
    compute(kv, other := req("o", list(range(100, 116))), 16)  # evicts a's blocks from the device
    kv.free(other)
    again = req("a2", prompt + [7])
    hit = kv.find_prefix(again)
    assert hit.block_ids == [] and hit.num_tokens == 12 and hit.cpu_block_ids == list(cpu_of.values())
    assert kv.allocate(again, 1, hit)
    assert again.num_computed_tokens == 12
    loads = kv.take_cpu_loads()
    assert [c for c, _ in loads] == hit.cpu_block_ids and [d for _, d in loads] == kv.blocks_of("a2")[:3]
    assert kv.cpu_tier.stats.hit_tokens == 12
    kv.swaps_done()
    kv.check_invariants({"a2"})


def test_the_device_part_of_a_chain_comes_first_then_the_cpu_part():
    kv = tiered(num_blocks=6, num_cpu_blocks=6)
    prompt = list(range(12))
    compute(kv, a := req("a", prompt), 12)
    kv.take_cpu_offloads()
    device = kv.blocks_of("a")
    kv.free(a)
    # 3 blocks were never used; the 4th x takes is a's last (freed tail first: least recently used).
    compute(kv, req("x", list(range(200, 216))), 16)
    hit = kv.find_prefix(req("b", prompt + [1]))
    assert hit.block_ids == device[:2] and len(hit.cpu_block_ids) == 1 and hit.num_tokens == 12


def test_a_swap_out_evicts_copies_but_never_one_a_copy_of_the_step_touches():
    kv = tiered(num_blocks=8, num_cpu_blocks=3)
    compute(kv, a := req("a", list(range(12))), 12)
    kv.take_cpu_offloads()
    kv.free(a)
    compute(kv, fill := req("fill", list(range(100, 132))), 32)  # all 8 blocks: a's leave the device
    kv.free(fill)
    again = req("a2", list(range(12)) + [5])
    hit = kv.find_prefix(again)
    assert len(hit.cpu_block_ids) == 3 and kv.allocate(again, 1, hit)
    victim = req("v", [9] * 4)
    compute(kv, victim, 4)
    assert not kv.can_swap_out(victim)  # every CPU block is being loaded this step
    kv.swaps_done()
    assert kv.can_swap_out(victim)
    pairs = kv.swap_out(victim)
    assert len(pairs) == 1 and len(kv.cpu_tier) == 2 and kv.cpu_tier.stats.evicted_blocks == 1


def test_lru_eviction_order():
    cache = CpuPrefixCache()
    for h in (1, 2, 3):
        cache.add(h, h * 10, (h,))
    assert cache.lookup(1, (1,)) == 10 and cache.lookup(2, (9,)) is None  # a touch; a hash with other tokens
    assert cache.evict_one() == 20 and cache.evict_one() == 30 and cache.evict_one() == 10


@pytest.mark.parametrize("seed", range(3))
def test_cpu_pool_accounting_survives_swap_and_cache_use_together(seed):
    rng = random.Random(seed)
    kv = tiered(num_blocks=12, num_cpu_blocks=6)
    live: dict[str, Request] = {}
    swapped: dict[str, Request] = {}
    prompts = [[rng.randrange(4) for _ in range(rng.randrange(4, 17))] for _ in range(6)]
    for step in range(400):
        writes = [c for _, c in kv.take_cpu_offloads(limit=rng.randrange(1, 4))]  # CPU blocks this step writes
        action = rng.random()
        if action < 0.35 and len(live) < 4:
            r = req(f"r{step}", list(rng.choice(prompts)) + [step])
            hit = kv.find_prefix(r)
            if kv.allocate(r, r.num_tokens - hit.num_tokens, hit):
                r.num_computed_tokens = r.num_tokens
                kv.cache_computed_blocks(r)
                live[r.request_id] = r
        elif action < 0.55 and live:
            kv.free(live.pop(rng.choice(list(live))))
        elif action < 0.75 and live:
            r = live[rng.choice(list(live))]
            if kv.can_swap_out(r):
                writes += [c for _, c in kv.swap_out(r)]
                swapped[r.request_id] = live.pop(r.request_id)
        elif action < 0.9 and swapped:
            r = swapped[rng.choice(list(swapped))]
            if kv.can_swap_in(r):
                kv.swap_in(r)
                live[r.request_id] = swapped.pop(r.request_id)
        elif swapped:
            kv.free_swapped(swapped.pop(rng.choice(list(swapped))))
        kv.take_cpu_loads()  # loads run after the step's writes: reading a block written this step is in order
        assert len(writes) == len(set(writes)), "two copies of one step write one CPU block"
        kv.swaps_done()
        kv.check_invariants(set(live))
        cpu_ids = [c for t in kv.cpu_tables.values() for c in t] + [c for c, _ in kv.cpu_tier.entries.values()]
        assert len(cpu_ids) == len(set(cpu_ids)), "a CPU block both holds a swapped request and a prefix copy"
    assert kv.cpu_tier.stats.offloaded_blocks > 0 and kv.cpu_tier.stats.evicted_blocks > 0


def test_a_cpu_pool_size_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="cpu_kv_gib must be > 0"):
        EngineConfig(cpu_kv_gib=0)


@pytest.mark.slow
def test_greedy_tokens_equal_the_reference_when_blocks_come_from_the_cpu_tier(smollm2_folder):
    """A small device pool: other prompts push the first one's blocks out; asked again, its prefix
    comes back from the CPU tier, and the tokens are those of a fresh engine."""
    passage = " ".join(f"Car {i} goes to track {i % 7}." for i in range(20))
    params = SamplingParams(max_tokens=8, temperature=0)
    llm = LLM(model="smollm2-135m-instruct", device="cpu", num_kv_blocks=20, cpu_kv_gib=0.05, check_invariants=True)
    tok = llm.tokenizer
    first, others = tok(passage).input_ids, [tok(f"Story {j}: " + " ".join(f"w{j}_{i}" for i in range(40))).input_ids
                                             for j in range(3)]
    reference = LLM(model="smollm2-135m-instruct", device="cpu").generate([first], params, use_tqdm=False)
    llm.generate([first], params, use_tqdm=False)
    for prompt in others:
        llm.generate([prompt], params, use_tqdm=False)
    got = llm.generate([first], params, use_tqdm=False)
    assert got[0].outputs[0].token_ids == reference[0].outputs[0].token_ids
    stats = llm.engine.stats()
    assert stats.prefix_hits_cpu >= 10 * 16 and stats.cpu_load_bytes > 0 and stats.cpu_offload_bytes > 0
    assert llm.engine.kv.num_blocks_in_use() == 0
