"""Per-call time of a short GPU operation, without timing the launch path around it.

One launch between two CUDA events measures Python and launch overhead as much as the kernel
when the kernel is short (a decode at short contexts takes microseconds). Here each sample is
`calls` back-to-back calls captured in one CUDA graph and replayed between two events, so the
events see only device time; where capture fails, the calls are launched back to back between
the events instead. Off CUDA (the interpreter smoke run) the same loop is timed by the wall clock.
"""
from __future__ import annotations

import time
from typing import Callable


def time_per_call_ms(fn: Callable[[], object], device: str, samples: int, calls: int) -> tuple[float, str]:
    """(median over `samples` of the mean milliseconds per call, how it was timed:
    "cuda_graph", "cuda_events" or "wall")."""
    import torch

    if torch.device(device).type != "cuda":
        fn()  # warm-up
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - start) * 1e3 / calls)
        return _median(times), "wall"
    replay, method = _capture(fn, calls)
    for _ in range(2):
        replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return _median(times), method


def _capture(fn: Callable[[], object], calls: int) -> tuple[Callable[[], None], str]:
    """A callable that runs `calls` calls: a graph replay when capture works."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and allocate outside the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except RuntimeError:
        torch.cuda.synchronize()

        def launches() -> None:
            for _ in range(calls):
                fn()

        return launches, "cuda_events"
    return graph.replay, "cuda_graph"


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]
