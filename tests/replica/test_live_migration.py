"""Live migration at the engine: the target reserves, the source copies full blocks in stages while
the request keeps running, the commit moves the rest. The fake runner checks that every token's
KV sits in its block at every step, so a block copied wrong or missing fails the next step."""
from __future__ import annotations

import random

from shunter.clock import FakeClock
from shunter.mathutil import cdiv
from shunter.replica.engine_protocol import MIGRATION_WATCHDOG_S
from shunter.sampling_params import SamplingParams
from tests.replica.fakes import make_engine, prompt, reference_output, run_to_completion

GREEDY = SamplingParams(max_tokens=40, temperature=0)


def started(p: list[int], steps: int, **kw):
    src = make_engine(**kw)
    src.add_request("m", p, GREEDY)
    for _ in range(steps):
        src.step()
    return src


def live_move(src, dst, stages: int, steps_between: int = 3) -> int:
    """Reserve, `stages` stages with the source stepping in between, then commit; tokens resumed with KV."""
    request = src.scheduler.requests["m"]
    assert dst.reserve_migration("m", cdiv(request.num_tokens, src.block_size))
    sent, epoch = 0, request.num_preemptions
    for _ in range(stages):
        stage = src.export_blocks("m", sent)
        assert stage is not None and dst.import_blocks(stage)
        sent, epoch = stage.end_block, stage.epoch
        for _ in range(steps_between):
            src.step()
    state = src.export_request("m", from_block=sent, epoch=epoch)
    assert state.kv_first_block == sent
    return dst.import_request(state)


def test_a_request_moved_in_stages_resumes_with_its_kv_and_the_same_tokens():
    p = prompt(70, 1)
    src, dst = started(p, 4), make_engine()
    resumed = live_move(src, dst, stages=3)
    assert resumed > 70 and not src.has_unfinished_requests() and src.stats().kv_blocks_in_use == 0
    dst.step()
    assert dst.runner.steps[-1].scheduled[0].start == resumed  # continued, not recomputed
    assert run_to_completion(dst)["m"][-1] == reference_output(p, 40)[-1]
    assert dst.stats().kv_blocks_in_use == 0 and not dst.kv.reservations


def test_the_commit_carries_only_what_the_stages_did_not():
    p = prompt(100, 2)
    src, dst = started(p, 2), make_engine()
    assert dst.reserve_migration("m", 8)
    stage = src.export_blocks("m", 0)
    assert stage.first_block == 0 and stage.num_blocks == 101 // 16 and stage.computed_blocks == cdiv(101, 16)
    assert dst.import_blocks(stage)
    state = src.export_request("m", from_block=stage.end_block, epoch=stage.epoch)
    assert len(state.kv) == cdiv(state.num_computed_tokens, 16) - stage.end_block == 1
    dst.import_request(state)
    assert run_to_completion(dst)["m"] == reference_output(p, 40)


def test_a_preemption_between_stage_and_commit_sends_every_block_again():
    p = prompt(60, 3)
    src, dst = started(p, 3), make_engine()
    assert dst.reserve_migration("m", 5)
    stage = src.export_blocks("m", 0)
    assert dst.import_blocks(stage)
    src.scheduler.requests["m"].num_preemptions += 1  # as if preempted (its KV recomputed since)
    state = src.export_request("m", from_block=stage.end_block, epoch=stage.epoch)
    assert state.kv_first_block == 0 and len(state.kv) == cdiv(state.num_computed_tokens, 16)
    dst.import_request(state)
    assert run_to_completion(dst)["m"] == reference_output(p, 40)


def test_a_commit_whose_stages_never_came_recomputes_and_frees_the_reservation():
    p = prompt(60, 4)
    src, dst = started(p, 3), make_engine()
    assert dst.reserve_migration("m", 5)
    stage = src.export_blocks("m", 0)  # copied, but never written on the target
    state = src.export_request("m", from_block=stage.end_block, epoch=stage.epoch)
    assert dst.import_request(state) == 0
    assert not dst.kv.reservations
    assert run_to_completion(dst)["m"] == reference_output(p, 40)


def test_a_target_out_of_blocks_refuses_and_holds_nothing():
    dst = make_engine(num_blocks=8)
    dst.add_request("busy", prompt(60, 5), GREEDY)
    dst.step()
    free = dst.kv.num_free_blocks
    assert not dst.reserve_migration("m", free + 1)
    assert dst.kv.num_free_blocks == free and not dst.kv.reservations
    assert dst.reserve_migration("m", free)
    assert dst.cancel_migration("m") == free and dst.kv.num_free_blocks == free


def test_a_stage_past_what_was_filled_or_of_another_block_size_is_refused():
    p = prompt(80, 6)
    src, dst = started(p, 2), make_engine()
    stage = src.export_blocks("m", 0)
    assert not dst.import_blocks(stage)  # no reservation
    assert dst.reserve_migration("m", 6)
    later = src.export_blocks("m", 2)
    assert not dst.import_blocks(later)  # blocks 0-1 never came
    stage.block_size = 32
    assert not dst.import_blocks(stage)
    dst.cancel_migration("m")
    dst.scheduler.check_invariants()
    assert not dst.kv.reservations


def test_the_watchdog_frees_a_reservation_left_without_follow_up():
    clock = FakeClock()
    dst = make_engine(clock=clock)
    assert dst.reserve_migration("m", 4) and dst.reserve_migration("n", 2)
    clock.advance(MIGRATION_WATCHDOG_S / 2)
    assert dst.reserve_migration("n", 3)  # a follow-up touches it
    clock.advance(MIGRATION_WATCHDOG_S / 2 + 0.1)
    assert dst.expire_migrations() == ["m"]
    assert set(dst.kv.reservations) == {"n"} and dst.stats().kv_blocks_in_use == 3
    clock.advance(MIGRATION_WATCHDOG_S)
    assert dst.expire_migrations() == ["n"] and dst.stats().kv_blocks_in_use == 0


def test_random_live_moves_under_load_keep_every_token_and_leak_nothing():
    """Both engines busy and short of blocks (preemption by recompute), one request moved with a
    random number of stages at random times: every request ends with the reference's tokens."""
    rng = random.Random(7)
    for trial in range(20):
        src, dst = make_engine(num_blocks=24), make_engine(num_blocks=24)
        prompts = {f"r{i}": prompt(rng.randrange(10, 90), 100 * trial + i) for i in range(4)}
        for rid, p in prompts.items():
            (src if rid in ("r0", "r1") else dst).add_request(rid, p, GREEDY)
        src.add_request("m", prompts.setdefault("m", prompt(rng.randrange(20, 120), trial)), GREEDY)
        for _ in range(rng.randrange(1, 8)):
            src.step()
        if "m" not in src.scheduler.requests:
            continue
        request = src.scheduler.requests["m"]
        if dst.reserve_migration("m", cdiv(request.num_tokens, 16)):
            sent, epoch = 0, request.num_preemptions
            for _ in range(rng.randrange(0, 4)):
                stage = src.export_blocks("m", sent)
                if stage is None or not dst.import_blocks(stage):
                    break
                sent, epoch = stage.end_block, stage.epoch
                for _ in range(rng.randrange(0, 4)):
                    src.step()
            if "m" in src.scheduler.requests:
                dst.import_request(src.export_request("m", from_block=sent, epoch=epoch))
            else:
                dst.cancel_migration("m")
        done = {**run_to_completion(src), **run_to_completion(dst)}
        for rid, out in done.items():
            assert out == reference_output(prompts[rid], 40)[: len(out)] and len(out) >= 1
        for engine in (src, dst):
            assert engine.stats().kv_blocks_in_use == 0 and not engine.kv.reservations
