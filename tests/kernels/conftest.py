"""Kernel tests run Triton's interpreter on CPU against the torch reference.

`TRITON_INTERPRET=1` is set per test, not for the whole session: the CPU engine tests in other
folders must keep dispatching to the reference. That is enough because `shunter.kernels.ops` decides
at call time and (re)builds its kernel modules in the mode Triton's env var asks for then, no
matter when `triton` itself was imported. GPU tests run without it, and last: Triton 3.9's
interpreter stops working in a process once a kernel has been compiled there.
"""
from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours_on_gpu = [item for item in items if HERE in Path(item.fspath).parents and item.get_closest_marker("gpu")]
    if ours_on_gpu:
        keep = set(map(id, ours_on_gpu))
        items[:] = [item for item in items if id(item) not in keep] + ours_on_gpu


@pytest.fixture(autouse=True)
def triton_interpreter(request: pytest.FixtureRequest):
    if request.node.get_closest_marker("gpu") is not None:
        yield
        return
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "1")
    yield
    mp.undo()
