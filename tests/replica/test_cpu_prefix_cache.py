"""The prefix cache's CPU tier: published blocks are copied to the CPU pool a bounded number a
step, a prefix the device evicted is found there and loaded into fresh blocks, swap-outs evict
copies least recently used first but never one a copy of the same step writes or a load in flight
reads; a load given up on keeps its device blocks held until it lands; the CPU pool's accounting
holds under swap, cache use and loads that land late or are given up on, together (randomized);
on the real model, greedy tokens equal the reference when blocks come from the CPU tier, and when
a load times out and the request computes those tokens instead."""
from __future__ import annotations

import random
import time

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
    assert kv.take_cpu_offloads() == [] and len(kv.cpu_tier) == 0  # on their way
    kv.swaps_done()  # the runner made them within the step
    assert len(kv.cpu_tier) == 3 and kv.cpu_tier.stats.offloaded_blocks == 3
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
    kv.swaps_done()
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
    kv.swaps_done()
    device = kv.blocks_of("a")
    kv.free(a)
    # 3 blocks were never used; the 4th x takes is a's last (freed tail first: least recently used).
    compute(kv, req("x", list(range(200, 216))), 16)
    hit = kv.find_prefix(req("b", prompt + [1]))
    assert hit.block_ids == device[:2] and len(hit.cpu_block_ids) == 1 and hit.num_tokens == 12


def test_a_swap_out_evicts_copies_but_never_one_a_load_still_reads():
    kv = tiered(num_blocks=8, num_cpu_blocks=3)
    compute(kv, a := req("a", list(range(12))), 12)
    kv.take_cpu_offloads()
    kv.swaps_done()
    kv.free(a)
    compute(kv, fill := req("fill", list(range(100, 132))), 32)  # all 8 blocks: a's leave the device
    kv.free(fill)
    again = req("a2", list(range(12)) + [5])
    hit = kv.find_prefix(again)
    assert len(hit.cpu_block_ids) == 3 and kv.allocate(again, 1, hit)
    victim = req("v", [9] * 4)
    compute(kv, victim, 4)
    assert not kv.can_swap_out(victim)  # every CPU block is being loaded
    kv.swaps_done()
    assert not kv.can_swap_out(victim)  # the step's copies are done, but a load may land steps later
    assert kv.load_landed(kv.loads[again])
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
    kv = tiered(num_blocks=8, num_cpu_blocks=16)
    live: dict[str, Request] = {}
    swapped: dict[str, Request] = {}
    in_flight = []  # loads launched, landing a few steps later (some given up on first)
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
            if r not in kv.loads and kv.can_swap_out(r):
                writes += [c for _, c in kv.swap_out(r)]
                swapped[r.request_id] = live.pop(r.request_id)
        elif action < 0.9 and swapped:
            r = swapped[rng.choice(list(swapped))]
            if kv.can_swap_in(r):
                kv.swap_in(r)
                live[r.request_id] = swapped.pop(r.request_id)
        elif swapped:
            kv.free_swapped(swapped.pop(rng.choice(list(swapped))))
        # Loads run after the step's writes (reading a block written this step is in order) and
        # land steps later, or are given up on first.
        in_flight += [kv.loads[r] for r in live.values() if r in kv.loads and kv.loads[r] not in in_flight]
        kv.take_cpu_loads()
        for load in list(in_flight):
            if rng.random() < 0.3:
                in_flight.remove(load)
                kv.load_landed(load)
            elif not load.abandoned and rng.random() < 0.1:
                kv.abandon_load(load.request, timed_out=True)
        assert len(writes) == len(set(writes)), "two copies of one step write one CPU block"
        kv.swaps_done()
        kv.check_invariants(set(live))
        cpu_ids = [c for t in kv.cpu_tables.values() for c in t] + [c for c, _ in kv.cpu_tier.entries.values()]
        assert len(cpu_ids) == len(set(cpu_ids)), "a CPU block both holds a swapped request and a prefix copy"
    assert kv.cpu_tier.stats.offloaded_blocks > 0 and kv.cpu_tier.stats.evicted_blocks > 0
    assert kv.cpu_tier.stats.loaded_blocks > 0 and kv.cpu_tier.stats.load_timeouts > 0


def test_a_load_given_up_on_holds_its_blocks_until_it_lands():
    kv = tiered(num_blocks=4)
    prompt = list(range(12))
    compute(kv, a := req("a", prompt), 12)
    kv.take_cpu_offloads()
    kv.swaps_done()
    kv.free(a)
    compute(kv, other := req("o", list(range(100, 116))), 16)  # a's blocks leave the device
    kv.free(other)
    again = req("a2", prompt + [7])
    hit = kv.find_prefix(again)
    assert kv.allocate(again, 0, hit) and again.num_computed_tokens == 12
    targets = list(kv.blocks_of("a2"))
    load = kv.loads[again]
    assert kv.abandon_load(again, timed_out=True) == 12
    assert again.num_computed_tokens == 0 and kv.blocks_of("a2") == []
    assert kv.num_free_blocks == 1 and kv.cpu_tier.stats.hit_tokens == 0 and kv.cpu_tier.stats.load_timeouts == 1
    kv.check_invariants({"a2"})
    compute(kv, again, 4)  # it computes instead, in a block the copy does not write
    assert kv.blocks_of("a2")[0] not in targets
    assert not kv.load_landed(load)  # the copy lands: its blocks are free again
    assert kv.num_free_blocks == 3
    kv.free(again)
    kv.check_invariants(set())


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


class _LateLoad:
    """A load that lands `after_s` after it starts, writing garbage: blocks handed on before then
    would show in the tokens."""

    def __init__(self, runner, pairs, after_s: float) -> None:
        self.runner, self.pairs, self.lands_at, self.landed = runner, pairs, time.monotonic() + after_s, False

    def done(self) -> bool:
        if not self.landed and time.monotonic() >= self.lands_at:
            ids = [d for _, d in self.pairs]
            for k, v in self.runner.kv_caches:
                k[ids], v[ids] = 7.0, -7.0
            self.landed = True
        return self.landed

    def wait(self, timeout_s: float) -> bool:
        return self.done()


@pytest.mark.slow
def test_greedy_tokens_equal_the_reference_when_a_cpu_tier_load_times_out(smollm2_folder):
    """The same prompts, but the load of the first prompt's prefix lands only after its timeout:
    the request computes those tokens instead (waiting, in a pool this small, for the blocks the
    late copy holds), the copy landing late writes garbage that reaches no request's KV, and the
    copies it read leave the CPU tier."""
    passage = " ".join(f"Car {i} goes to track {i % 7}." for i in range(20))
    params = SamplingParams(max_tokens=8, temperature=0)
    llm = LLM(model="smollm2-135m-instruct", device="cpu", num_kv_blocks=20, cpu_kv_gib=0.05,
              cpu_load_timeout_s=0.01, check_invariants=True)
    tok = llm.tokenizer
    first, others = tok(passage).input_ids, [tok(f"Story {j}: " + " ".join(f"w{j}_{i}" for i in range(40))).input_ids
                                             for j in range(3)]
    reference = LLM(model="smollm2-135m-instruct", device="cpu").generate([first, *others], params, use_tqdm=False)
    llm.generate([first], params, use_tqdm=False)
    for prompt in others:
        llm.generate([prompt], params, use_tqdm=False)
    runner, late = llm.engine.runner, []
    runner.load = lambda pairs: late.append(_LateLoad(runner, pairs, 0.5)) or late[-1] if pairs else None
    got = llm.generate([first], params, use_tqdm=False)
    assert got[0].outputs[0].token_ids == reference[0].outputs[0].token_ids
    stats = llm.engine.stats()
    # One load only: its copies left the CPU tier, so nothing waits on them again.
    assert len(late) == 1 and late[0].landed and stats.cpu_load_timeouts == 1
    again = llm.generate(others, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in reference[1:]]
    assert llm.engine.kv.num_blocks_in_use() == 0 and not llm.engine.kv.abandoned_loads
