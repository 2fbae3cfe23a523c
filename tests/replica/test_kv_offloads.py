"""Write-through copies to the CPU tier beside the steps (`replica/kv_offloads.py`): a step that
starts copies returns before they land, and they join the tier only when they have; a copy's
device blocks are not handed on in its own step, and a later step that hands one on waits for
the copies in flight (`after_offloads`). On the fake runner a copy reads its blocks as late as it
may, when it lands, so a block rewritten before that would put wrong KV in the tier, which the
KV check of the request loading it catches. The tokens equal the reference every time."""
from __future__ import annotations

import random

import pytest
import torch

from shunter import SamplingParams
from shunter.clock import FakeClock
from shunter.replica.kv_offloads import Offloader
from tests.replica.fakes import make_engine, prompt, reference_output, run_to_completion
from tests.replica.test_kv_cache_manager import compute, req
from tests.replica.test_cpu_prefix_cache import tiered

PARAMS = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)


def test_a_step_returns_before_its_copies_land_and_they_join_the_tier_when_they_do():
    engine = make_engine(num_blocks=32, num_cpu_blocks=32, clock=FakeClock(), cpu_kv_gib=1.0)
    engine.runner.offload_delay_s = 0.05  # five of the fake's steps
    engine.add_request("a", prompt(64, seed=1), SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
    engine.step()  # the prefill publishes 4 blocks
    engine.step()  # this step starts their copies
    tier = engine.kv.cpu_tier
    assert len(tier.writing) == 4 and len(tier) == 0 and len(engine.kv.offloads) == 1
    for _ in range(4):
        engine.step()
    assert len(tier) == 0  # 0.05 s after the start is the next step's poll
    engine.step()
    assert len(tier) == 4 and not tier.writing and not engine.kv.offloads
    assert tier.stats.offloaded_blocks == 4
    run_to_completion(engine)
    assert engine.stats().kv_blocks_in_use == 0


def test_a_block_handed_on_while_its_copy_is_in_flight_is_flagged():
    kv = tiered(num_blocks=3, num_cpu_blocks=8)
    compute(kv, a := req("a", list(range(8))), 8)
    pairs = kv.take_cpu_offloads()
    assert len(pairs) == 2
    kv.free(a)
    assert kv.num_free_blocks == 1  # held for the step that starts the copies
    kv.swaps_done(offloads=_NotLanded())
    assert kv.num_free_blocks == 3 and not kv.offload_reads_reused()
    compute(kv, req("b", list(range(100, 104))), 4)  # the never-used block first: nothing handed on
    assert not kv.offload_reads_reused()
    compute(kv, req("c", list(range(200, 204))), 4)  # a's last block, whose copy may not have read it
    assert kv.offload_reads_reused()
    kv.check_invariants({"b", "c"})


class _NotLanded:
    def done(self) -> bool:
        return False


@pytest.mark.parametrize("seed", range(4))
def test_copies_in_flight_while_blocks_are_handed_on_give_the_reference_tokens(seed):
    """A small device pool, a large CPU tier, copies that land 10 steps after they start, and
    prompts that come back after the device has evicted them: blocks whose copies are in flight
    are handed on and rewritten, and prompts are loaded back from the tier."""
    rng = random.Random(seed)
    engine = make_engine(num_blocks=10, num_cpu_blocks=128, clock=FakeClock(), cpu_kv_gib=1.0, max_num_seqs=2)
    engine.runner.offload_delay_s = 0.1
    prompts = [prompt(rng.randrange(20, 90), seed=100 * seed + i) for i in range(6)]
    want, done = {}, {}
    for i in range(24):
        tokens = rng.choice(prompts) + [7 + i]
        engine.add_request(f"r{i}", tokens, PARAMS)
        want[f"r{i}"] = reference_output(tokens, PARAMS.max_tokens, ignore_eos=True)
        if rng.random() < 0.4:
            done |= run_to_completion(engine, max_steps=rng.randrange(1, 6), stop_early=True)
    done |= run_to_completion(engine)
    assert done == want
    waited = sum(out.after_offloads for out in engine.runner.steps)
    assert waited > 0, "no step handed on a block whose copy was in flight: the test tests nothing"
    assert engine.stats().prefix_hits_cpu > 0 and engine.stats().kv_blocks_in_use == 0


def test_the_offloader_makes_its_copies_in_order_and_waits_for_them():
    landed: list[list[tuple[int, int]]] = []
    offloader = Offloader(landed.append, torch.device("cpu"))
    tickets = [offloader.start([(i, i)]) for i in range(5)]
    offloader.wait()
    assert landed == [[(i, i)] for i in range(5)] and all(t.done() for t in tickets)


def test_a_copy_that_fails_raises_on_the_engine_thread():
    def broken(pairs):
        raise RuntimeError("copy failed")

    offloader = Offloader(broken, torch.device("cpu"))
    ticket = offloader.start([(0, 0)])
    with pytest.raises(RuntimeError, match="copy failed"):
        offloader.wait()
    with pytest.raises(RuntimeError, match="copy failed"):
        ticket.done()
