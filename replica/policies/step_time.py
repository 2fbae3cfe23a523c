"""A running linear model of step time: seconds ~= fixed + per_token * tokens in the step.

SLAI sizes each step's token budget so the step ends before the tightest decode must emit its
next token; that needs the cost of a step as a function of its size, measured as the engine runs.
Exponentially weighted sums forget old steps, so the fit follows the machine's current state.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepTimeModel:
    decay: float = 0.95  # weight kept by the past at each new observation
    n: float = 0.0  # weighted count
    sum_x: float = 0.0
    sum_y: float = 0.0
    sum_xx: float = 0.0
    sum_xy: float = 0.0
    num_observed: int = 0

    def observe(self, num_tokens: int, seconds: float) -> None:
        d = self.decay
        x = float(num_tokens)
        self.n = d * self.n + 1.0
        self.sum_x = d * self.sum_x + x
        self.sum_y = d * self.sum_y + seconds
        self.sum_xx = d * self.sum_xx + x * x
        self.sum_xy = d * self.sum_xy + x * seconds
        self.num_observed += 1

    @property
    def mean_step_time(self) -> float:
        return self.sum_y / self.n if self.n else 0.0

    def coefficients(self) -> tuple[float, float]:
        """(fixed seconds, seconds per token); both >= 0. Without spread in sizes, all is per token."""
        if not self.n:
            return 0.0, 0.0
        mean_x, mean_y = self.sum_x / self.n, self.sum_y / self.n
        var = self.sum_xx / self.n - mean_x * mean_x
        if var > 1e-9 * max(mean_x * mean_x, 1.0):
            slope = (self.sum_xy / self.n - mean_x * mean_y) / var
            if slope > 0:
                return max(mean_y - slope * mean_x, 0.0), slope
        return 0.0, mean_y / max(mean_x, 1.0)

    def predict(self, num_tokens: int) -> float:
        fixed, per_token = self.coefficients()
        return fixed + per_token * num_tokens

    def max_tokens_within(self, seconds: float) -> int | None:
        """The largest step that should finish within `seconds`; None while nothing is measured."""
        if self.num_observed == 0:
            return None
        fixed, per_token = self.coefficients()
        if per_token <= 0:
            return None
        return max(int((seconds - fixed) / per_token), 0)
