"""RAD through the real engine over the scripted fake runner, on a fake clock: its split of a
step between decodes and prefills follows the queues, and its steps land on tile boundaries."""
from __future__ import annotations

import pytest

from shunter import SamplingParams
from shunter.replica.engine import Engine
from shunter.replica.engine_config import EngineConfig
from shunter.replica.scheduler import SchedulerOutput
from shunter.replica.step_staircase import StepStaircase
from tests.replica.fakes import make_engine, prompt, reference_output, run_to_completion

TILES = StepStaircase.uniform(32, 1e-3, fixed_s=0.2e-3)  # tiles of 32 tokens, a small fixed cost


def split(out: SchedulerOutput) -> tuple[int, int]:
    """(decode tokens, prefill tokens) of one step, as launched."""
    decode = sum(s.num_new_tokens for s in out.scheduled if s.start >= s.request.num_prompt_tokens)
    return decode, out.num_tokens - decode


def decoding(engine: Engine, n: int, prompt_len: int = 15) -> None:
    """Start `n` requests and step until all of them decode."""
    for i in range(n):
        engine.add_request(f"d{i}", prompt(prompt_len, i), SamplingParams(max_tokens=500, temperature=0, ignore_eos=True))
    for _ in range(1000):
        s = engine.scheduler
        if not s.waiting and len(s.running) == n and not any(r.is_prefilling for r in s.running):
            return
        engine.step()
    raise AssertionError("the requests never all decoded")


def queue_prompts(engine: Engine, n: int, length: int = 200, max_tokens: int = 4) -> None:
    for i in range(n):
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        engine.add_request(f"p{i}", prompt(length, 100 + i), params)


def last_split(engine: Engine) -> tuple[int, int]:
    engine.step()
    return split(engine.runner.steps[-1])


def test_a_decode_backlog_gets_decode_tokens_and_leaves_prefill_its_share():
    """48 decodes and 16 startable prompts (64 seats) want more than a 32-token step: RAD gives
    the decodes 48/64 of it and the prompts the rest."""
    engine = make_engine(num_blocks=1024, staircase=TILES, policy="rad", max_num_seqs=64, max_num_batched_tokens=32)
    decoding(engine, 48)
    queue_prompts(engine, 16)
    assert last_split(engine) == (24, 8)


def test_decode_first_shuts_prefill_out_once_decodes_fill_the_budget():
    """The contrast: under FCFS's decode-first rule, once 32 requests decode, a 32-token step has
    no room for the other 16 prompts, which wait until decodes finish; RAD starts all 48."""
    started = {}
    for policy in ("fcfs", "rad"):
        engine = make_engine(num_blocks=1024, staircase=TILES, policy=policy, max_num_seqs=64, max_num_batched_tokens=32)
        for i in range(48):
            engine.add_request(f"d{i}", prompt(15, i), SamplingParams(max_tokens=500, temperature=0, ignore_eos=True))
        for _ in range(200):
            engine.step()
        started[policy] = sum(r.num_output_tokens > 0 for r in engine.scheduler.running)
    assert started["rad"] == 48 and started["fcfs"] < 40


@pytest.mark.parametrize("policy, want", [("rad", (4, 28)), ("fcfs", (8, 24))])
def test_a_prefill_backlog_gets_prefill_tokens(policy, want):
    engine = make_engine(num_blocks=1024, staircase=TILES, policy=policy, max_num_seqs=64, max_num_batched_tokens=32)
    decoding(engine, 8)
    queue_prompts(engine, 56)
    assert last_split(engine) == want


def test_the_split_follows_the_queues_as_they_change_and_decodes_take_turns():
    """As prompts are admitted and finish their prefill, the decode share grows back; a decode
    left out of one step is in the next (least recently served first)."""
    engine = make_engine(num_blocks=2048, staircase=TILES, policy="rad", max_num_seqs=64, max_num_batched_tokens=32)
    decoding(engine, 8)
    queue_prompts(engine, 56, length=40, max_tokens=300)
    shares, served = [], []
    for _ in range(300):
        engine.step()
        out = engine.runner.steps[-1]
        shares.append(split(out)[0])
        served.append({s.request.request_id for s in out.scheduled if s.request.request_id.startswith("d")})
    assert shares[0] == 4 and shares[-1] >= 31  # from a prefill backlog to a decode backlog
    assert all(a | b == {f"d{i}" for i in range(8)} for a, b in zip(served, served[1:]) if len(a) == 4)


def test_a_saturated_step_is_filled_to_the_tile_boundary():
    """Budget 100 on tiles of 32: with a long prompt waiting, RAD's steps take 96 tokens (3
    decodes and 93 of the prompt), never the 100 that would pay for a fourth tile; the same
    engine without the staircase, and FCFS, take 100. What fits whole runs whole."""
    sizes = {}
    for label, policy, settings in (("rad", "rad", {}), ("unaligned", "rad", {"tile_aligned": False}),
                                    ("fcfs", "fcfs", {})):
        engine = make_engine(num_blocks=256, staircase=TILES, policy=policy, policy_settings=settings,
                             max_num_seqs=8, max_num_batched_tokens=100)
        decoding(engine, 3)
        engine.add_request("long", prompt(500, 7), SamplingParams(max_tokens=2, temperature=0))
        steps = [split(engine.runner.steps[-1]) for _ in range(3) if engine.step() is not None]
        sizes[label] = steps
    assert sizes["rad"] == [(3, 93)] * 3
    assert sizes["unaligned"] == sizes["fcfs"] == [(3, 97)] * 3
    small = make_engine(num_blocks=256, staircase=TILES, policy="rad", max_num_seqs=8, max_num_batched_tokens=100)
    decoding(small, 3)
    small.add_request("short", prompt(20, 7), SamplingParams(max_tokens=2, temperature=0))
    assert last_split(small) == (3, 20)


def test_rad_tokens_equal_the_reference_with_tiles_and_a_split():
    engine = make_engine(num_blocks=64, staircase=TILES, policy="rad", max_num_seqs=6, max_num_batched_tokens=40)
    expected = {}
    for i in range(10):
        p = prompt(10 + 17 * i, i)
        engine.add_request(f"r{i}", p, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True,
                                                       priority=("interactive", "batch")[i % 2]))
        expected[f"r{i}"] = reference_output(p, 30, ignore_eos=True)
    assert run_to_completion(engine) == expected


def test_a_budget_below_the_finest_tile_is_a_start_up_error_naming_the_flag():
    """Below 16 tokens (the finest tile the timing resolves) RAD is refused before anything
    loads; `shunter serve` says the same naming `--max-num-batched-tokens` (tests/router)."""
    with pytest.raises(ValueError, match="^max_num_batched_tokens: 8 is below"):
        EngineConfig(policy="rad", max_num_batched_tokens=8)
    EngineConfig(policy="fcfs", max_num_batched_tokens=8)  # only RAD sizes steps in tiles


def test_a_tile_larger_than_the_budget_cannot_show_so_steps_take_the_budget():
    """Budget 24 on tiles of 32: the timing (16 tokens only) finds no boundary, and RAD's
    saturated steps take the whole budget."""
    engine = make_engine(num_blocks=256, staircase=TILES, policy="rad", max_num_seqs=8, max_num_batched_tokens=24)
    assert engine.stats().step_tile_boundaries == ()
    engine.add_request("long", prompt(200, 7), SamplingParams(max_tokens=2, temperature=0))
    assert last_split(engine) == (0, 24)
