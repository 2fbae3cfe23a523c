"""The step-time staircase: finding tile boundaries in timings, and sizing steps on it."""
from __future__ import annotations

import random

import pytest

from shunter.replica.step_staircase import STRIDE, StepStaircase


def noisy_staircase(tile: int, seed: int, noise: float = 0.01, ramp: float = 0.0) -> StepStaircase:
    """Tiles of 1 ms over a 2 ms floor, a small ramp, and up to `noise` relative jitter."""
    rng = random.Random(seed)
    sizes = list(range(STRIDE, 1025, STRIDE))
    times = [(2e-3 + -(-n // tile) * 1e-3 + ramp * n) * (1 + rng.uniform(0, noise)) for n in sizes]
    return StepStaircase.from_timings(sizes, times)


@pytest.mark.parametrize("tile", [32, 64, 128, 256])
@pytest.mark.parametrize("seed", range(3))
def test_boundaries_of_a_noisy_staircase_are_its_tiles(tile, seed):
    stairs = noisy_staircase(tile, seed, ramp=1e-7)
    assert stairs.boundaries == tuple(range(tile, 1024, tile))
    assert stairs.tile == tile


def test_a_disturbed_timing_is_no_boundary():
    """A size timed while something else ran (slower than larger sizes) is smoothed away."""
    sizes = list(range(STRIDE, 513, STRIDE))
    times = [1e-3 + -(-n // 128) * 1e-3 for n in sizes]
    times[5] *= 3  # 96 tokens: disturbed in every repeat
    stairs = StepStaircase.from_timings(sizes, times)
    assert stairs.boundaries == (128, 256, 384) and stairs.seconds[5] == stairs.seconds[6]


def test_a_ramp_has_no_boundaries():
    sizes = list(range(STRIDE, 1025, STRIDE))
    stairs = StepStaircase.from_timings(sizes, [1e-3 + 5e-6 * n for n in sizes])
    assert stairs.boundaries == () and stairs.tile is None
    assert stairs.best_step(500, 512) == 500  # nothing to align to: all the work


def test_seconds_at_takes_the_stair_holding_the_step_and_continues_past_the_grid():
    stairs = StepStaircase.uniform(64, 1e-3, fixed_s=1e-3)
    assert stairs.seconds_at(1) == stairs.seconds_at(64) == pytest.approx(2e-3)
    assert stairs.seconds_at(65) == pytest.approx(3e-3)
    assert stairs.boundaries_upto(1200)[-2:] == [1088, 1152]
    assert stairs.seconds_at(1025) == pytest.approx(stairs.seconds_at(1088))
    assert stairs.seconds_at(1100) > stairs.seconds_at(1088)


def test_best_step_runs_what_fits_and_aligns_a_saturated_step():
    stairs = StepStaircase.uniform(64, 1e-3, fixed_s=0.1e-3)
    assert stairs.best_step(40, 512) == 40  # all the work there is
    assert stairs.best_step(130, 512) == 130  # fits: the 2 past 128 would pay a step of their own later
    assert stairs.best_step(1000, 512) == 512  # the ceiling, a boundary
    assert stairs.best_step(1000, 520) == 512  # 520 would pay for 576
    assert stairs.best_step(520, 520) == 512  # saturated at the ceiling too
    assert stairs.best_step(0, 512) == 0
    heavy = StepStaircase.uniform(64, 1e-3, fixed_s=20e-3)  # a large fixed cost: a spill is worth its tile
    assert heavy.best_step(1000, 560) == 560


def test_aligned_gain_is_one_without_stairs_and_above_one_with_them():
    sizes = list(range(STRIDE, 1025, STRIDE))
    ramp = StepStaircase.from_timings(sizes, [1e-3 + 5e-6 * n for n in sizes])
    assert ramp.aligned_gain() == pytest.approx(1.0)
    assert StepStaircase.uniform(128, 1e-3).aligned_gain() > 1.05


@pytest.mark.parametrize("sizes, seconds", [([], []), ([16, 16], [1.0, 1.0]), ([16], [1.0, 2.0]), ([0], [1.0])])
def test_bad_timings_are_refused(sizes, seconds):
    with pytest.raises(ValueError):
        StepStaircase(tuple(sizes), tuple(seconds))


def test_a_second_runner_of_the_same_model_reuses_the_staircase_and_other_sizes_are_timed():
    """RAD times steps at start-up; a second engine of the same model, device and threads in
    the process (`bench policies`, tests) takes that measurement instead of timing again."""
    from shunter.replica.engine_config import EngineConfig
    from shunter.replica.model_runner import ModelRunner

    config = EngineConfig(model="random:tiny", device="cpu", num_kv_blocks=64, max_num_seqs=4)
    first, second = ModelRunner.create(config), ModelRunner.create(config)
    measured = first.measure_step_staircase(48, stride=16, repeats=1)
    calls = []
    second.model.forward = lambda *a, **k: calls.append(a)  # timing a step would call it
    assert second.measure_step_staircase(48, stride=16, repeats=1) is measured and calls == []
    with pytest.raises(TypeError):  # 64 tokens were never timed: this one runs the (stubbed) model
        second.measure_step_staircase(64, stride=16, repeats=1)
    assert calls
