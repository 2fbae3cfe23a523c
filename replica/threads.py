"""How many threads torch may use in a replica: the CPUs it was given, not every core.

torch starts one intra-op thread per core it sees. Two replicas on one 2-core machine, or one
engine beside other busy processes, then fight over the cores: on a busy 2-core machine
`LLM(...).generate` of 2x32 tokens took 52.7 s with torch's default threads and 3.3 s with one
(issue 11).
So a replica uses the CPUs it was given: Ray's `num_cpus` inside an actor, else the CPUs this
process may run on (its affinity, which `taskset` and container CPU sets narrow).
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


def _ray_cpus() -> float | None:
    """The CPUs Ray assigned to this worker; None outside a Ray worker (Ray is never imported here)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return ray.get_runtime_context().get_assigned_resources().get("CPU")
    except AssertionError:  # the driver: Ray assigns it no CPUs
        return None


def available_cpus() -> int:
    """The CPUs this process may use: Ray's assignment (at least 1), else its affinity."""
    cpus = _ray_cpus()
    if cpus:
        return max(1, int(cpus))
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_torch_threads(num_threads: int | None) -> int:
    """Set torch's intra-op threads (None: `available_cpus()`); returns the number set."""
    import torch

    n = num_threads or available_cpus()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.info("torch uses %d threads", n)
    return n
