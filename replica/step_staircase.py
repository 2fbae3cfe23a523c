"""The step-time staircase: what a step costs as a function of the tokens in it, and where it jumps.

A step's matrix multiplications run in tiles of rows (tokens), and the tiles in waves over the
GPU's multiprocessors, so a step that spills a few tokens past a tile boundary pays for the
whole next tile: in the compute-bound range step time is a staircase in the token count, not a
line. The model runner times one-sequence prefill steps of `STRIDE`, 2 x `STRIDE`, ... tokens
at start-up (`ModelRunner.measure_step_staircase`); `StepStaircase.from_timings` reads the
jumps off those timings. RAD (`policies/rad.py`) sizes its steps with `best_step`; the
simulator's cost models can carry a tile (`loadtest/sim/costs.py`). No torch here.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

STRIDE = 16  # tokens between timed sizes: the finest tile the start-up timing can resolve
MAX_TIMED_TOKENS = 1024  # beyond this the staircase is continued by its tile, not timed
REL_JUMP = 0.02  # a rise of this share of the step's time (and well above the ramp) is a jump


@dataclass(frozen=True)
class StepStaircase:
    """Timed sizes (ascending) and their fastest times; `boundaries`: sizes whose next timed
    size costs a jump more (a tile's last token). Empty when the times rise as a ramp."""

    sizes: tuple[int, ...]
    seconds: tuple[float, ...]
    boundaries: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.sizes or len(self.sizes) != len(self.seconds):
            raise ValueError("a staircase needs as many times as sizes, at least one")
        if any(b <= a for a, b in zip(self.sizes, self.sizes[1:])) or self.sizes[0] < 1:
            raise ValueError("staircase sizes must be positive and ascending")

    @classmethod
    def from_timings(cls, sizes: list[int], seconds: list[float], rel_jump: float = REL_JUMP) -> StepStaircase:
        """Find the jumps. The times are first made non-decreasing from the right (each the
        least of its own and every larger size's): a step of more tokens does at least the work
        of a smaller one, so a time above a larger step's is a disturbance (another process, a
        clock tick), not the device. The ramp between jumps is the lower quartile of the rises
        from one size to the next (a flat stair's rises are noise around 0, a linear ramp's all
        alike); a rise is a jump when it is more than three ramps and more than `rel_jump` of the
        step's time. Read so, a pure ramp (a CPU whose time grows with every row) has no
        boundaries."""
        smooth = list(seconds)
        for i in range(len(smooth) - 2, -1, -1):
            smooth[i] = min(smooth[i], smooth[i + 1])
        rises = [b - a for a, b in zip(smooth, smooth[1:])]
        ramp = max(_lower_quartile(rises), 0.0) if rises else 0.0
        found = tuple(n for n, t, rise in zip(sizes, smooth, rises) if rise > max(3 * ramp, rel_jump * t))
        return cls(tuple(sizes), tuple(smooth), found)

    @classmethod
    def uniform(cls, tile: int, seconds_per_tile: float, fixed_s: float = 0.0,
                max_tokens: int = MAX_TIMED_TOKENS) -> StepStaircase:
        """A staircase of equal tiles (tests, and a cost model that names its tile)."""
        sizes = list(range(STRIDE, max_tokens + 1, STRIDE))
        return cls.from_timings(sizes, [fixed_s + math.ceil(n / tile) * seconds_per_tile for n in sizes])

    @property
    def tile(self) -> int | None:
        return tile_of(self.boundaries)

    def boundaries_upto(self, limit: int) -> list[int]:
        """The boundaries up to `limit`, past the timed sizes continued every `tile` tokens."""
        out = [b for b in self.boundaries if b <= limit]
        tile = self.tile
        if tile is not None:
            b = self.boundaries[-1] + tile
            while b <= limit:
                out.append(b)
                b += tile
        return out

    def seconds_at(self, num_tokens: int) -> float:
        """A step of `num_tokens` costs what the smallest timed size holding it costs; past the
        timed sizes, the last time grown by the mean slope, at the next boundary (if any)."""
        sizes, seconds = self.sizes, self.seconds
        if num_tokens <= sizes[-1]:
            lo, hi = 0, len(sizes) - 1
            while lo < hi:  # the first timed size >= num_tokens
                mid = (lo + hi) // 2
                lo, hi = (mid + 1, hi) if sizes[mid] < num_tokens else (lo, mid)
            return seconds[lo]
        tile = self.tile
        n = num_tokens if tile is None else self.boundaries[-1] + math.ceil((num_tokens - self.boundaries[-1]) / tile) * tile
        slope = (seconds[-1] - seconds[0]) / (sizes[-1] - sizes[0]) if len(sizes) > 1 else seconds[0] / sizes[0]
        return seconds[-1] + max(slope, 0.0) * (n - sizes[-1])

    def best_step(self, demand: int, ceiling: int) -> int:
        """How many tokens a step should take when `demand` tokens could run and at most
        `ceiling` may. When it all fits, all of it: deferring a part only moves it to a later
        step that pays its own fixed cost and its own partial tile. When more waits than fits
        (saturation), the count with the most tokens per second among the ceiling and every
        boundary below it, the larger on a tie: a ceiling a few tokens past a boundary would
        pay for a tile it barely uses, and the tokens cut off ride in the next full step."""
        if demand < ceiling:
            return max(demand, 0)
        best, best_rate = ceiling, ceiling / self.seconds_at(ceiling)
        for b in self.boundaries_upto(ceiling - 1):
            rate = b / self.seconds_at(b)
            if rate > best_rate * (1 + 1e-9):
                best, best_rate = b, rate
        return best

    def aligned_gain(self) -> float:
        """Mean over the timed sizes of (best tokens/s at or below the size, boundaries included)
        / (tokens/s at the size): what aligning saturated steps to the staircase gains where a
        budget falls anywhere on the grid."""
        gains = [(self.best_step(n, n) / self.seconds_at(self.best_step(n, n))) / (n / t)
                 for n, t in zip(self.sizes, self.seconds)]
        return sum(gains) / len(gains)

    def to_dict(self) -> dict:
        return {"sizes": list(self.sizes), "seconds": list(self.seconds), "boundaries": list(self.boundaries),
                "tile": self.tile}


def tile_of(boundaries: tuple[int, ...] | list[int]) -> int | None:
    """The most common distance between boundaries (from 0 to the first counts): the tile;
    None without boundaries."""
    if not boundaries:
        return None
    gaps = Counter(b - a for a, b in zip((0, *boundaries), boundaries))
    return max(gaps.items(), key=lambda kv: (kv[1], kv[0]))[0]


def _lower_quartile(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 4]
