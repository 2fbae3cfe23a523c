"""What it costs to resume a preempted request, by recompute or by swap.

The two costs are measured once at start-up by the model runner (a prefill of a known length,
a swap of known blocks) and are plain numbers from then on, so the scheduler can pick, per
victim, the cheaper way back ("auto" mode) and policies can prefer victims cheap to resume.
No torch here: the policies and their tests use the same arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from shunter.replica.request import Request

MODES = ("recompute", "swap", "auto")


@dataclass(frozen=True)
class PreemptionCosts:
    """Seconds per recomputed token and per swapped block (one direction).

    The defaults stand in when nothing was measured (the fake runner, recompute-only engines):
    they only need the right ratio, since with one mode the constant does not change any choice.
    A block of 16 tokens costs about as much to move one way as 4 tokens to recompute."""

    recompute_s_per_token: float = 1e-4
    swap_s_per_block: float = 4e-4
    block_size: int = 16

    def recompute_s(self, request: Request) -> float:
        return request.num_computed_tokens * self.recompute_s_per_token

    def swap_s(self, request: Request) -> float:
        """Out now and back in later: two copies of every block the computed tokens occupy."""
        if math.isinf(self.swap_s_per_block):
            return math.inf
        blocks = -(-request.num_computed_tokens // self.block_size)
        return 2 * blocks * self.swap_s_per_block

    def choose(self, request: Request, mode: str, can_swap: bool) -> str:
        """The way `request` leaves the device: "swap" or "recompute"."""
        if mode == "recompute" or not can_swap:
            return "recompute"
        if mode == "swap":
            return "swap"
        return "swap" if self.swap_s(request) < self.recompute_s(request) else "recompute"

    def resume_s(self, request: Request, mode: str) -> float:
        """What resuming `request` would cost under `mode` (the cheaper way for "auto")."""
        if mode == "recompute":
            return self.recompute_s(request)
        if mode == "swap":
            return self.swap_s(request)
        return min(self.recompute_s(request), self.swap_s(request))
