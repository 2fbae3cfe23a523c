"""The garbage collector, tuned for a process that serves: freeze the start-up heap, and let the
young generation grow before it is collected.

Python's oldest-generation collections walk every tracked object. After start-up most of them
never die: modules, classes and functions of torch and transformers (~180k objects), and the
engine's own KV block objects (one per block: tens of thousands on a large pool). Walking them
cost an 85 ms pause every few hundred steps at 256 sequences of 2,048 tokens on our 2-core CPU
(0.21 ms a step on average, about a quarter of the host's step), a stall in every stream at once.
`gc.freeze()` moves them to a generation the collector never visits (vLLM's engine core does
the same after it starts); later objects are collected as before.

A step at 256 sequences makes about a thousand short-lived objects (scheduled requests, outputs,
their lists) that refcounting frees by the next step; at the default young-generation threshold
(700) that still started a collection every step (0.08 ms a step). At 10,000 the collector runs
about once in 3,000 such steps; cyclic garbage waits a little longer for it.

Once per process, at the end of the first engine's construction: a process that serves has one
engine for its life. Later engines in the same process (tests, a second offline `LLM`) are
collected as usual, so an engine that is dropped is still freed. The first is not, nor anything
it refers to: a process that builds and drops engines by the thousand (the simulator) calls
`leave_gc_untuned` first.
"""
from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # objects allocated (net) before the youngest generation is collected

_tuned = False


def leave_gc_untuned() -> None:
    """This process does not serve: engines built from now on leave the collector as it is.

    The simulator builds a cluster of engines per run and drops it after: a freeze at its first
    engine kept that whole cluster (its block pools: ~3 GB at 1,000 replicas) for the life of the
    process, and the runs after it were up to 19% slower."""
    global _tuned
    _tuned = True


def tune_gc_for_serving(again: bool = False) -> bool:
    """Collect once, freeze what is left and raise the young threshold; True where this call did
    it. `again`: thaw what an earlier call froze first, and freeze afresh (a benchmark that builds
    one engine per case, each to be measured as the only engine of its process)."""
    global _tuned
    if _tuned and not again:
        return False
    _tuned = True
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(YOUNG_THRESHOLD, young), older, oldest)
    return True
