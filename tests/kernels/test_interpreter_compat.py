"""The interpreter runs our kernels whichever Triton and numpy it meets: Triton 3.6 converts a
loop bound with `int(array of shape (1,))`, which numpy >= 2.4 refuses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shunter.kernels import ops as kernels
from shunter.kernels import interpreter_compat, reference
from tests.kernels.paged import assert_close, make_paged


@pytest.fixture
def interpreter():
    """Imported under `TRITON_INTERPRET=1` (the autouse fixture): Triton 3.6 decorates its own
    `tl.*` helpers for the mode in force when `triton` is first imported."""
    return pytest.importorskip("triton.runtime.interpreter")


def _strict_int(data: np.ndarray) -> int:
    """numpy >= 2.4's `int(array)`, whatever numpy is installed."""
    if data.ndim:
        raise TypeError("only 0-dimensional arrays can be converted to Python scalars")
    return int(data)


@pytest.fixture
def triton_36_interpreter(interpreter, monkeypatch):
    """The interpreter as Triton 3.6 patches `tl.tensor` (its `__index__` is `int(self.handle.data)`)
    under numpy >= 2.4."""
    original = interpreter._patch_lang_tensor

    def old_patch(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: _strict_int(self.handle.data))

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", old_patch)


def test_probe_tells_a_broken_interpreter_from_a_working_one(interpreter, triton_36_interpreter):
    assert not interpreter_compat.index_works(interpreter)
    assert interpreter_compat.apply()
    assert interpreter_compat.index_works(interpreter)


def test_decode_with_loaded_loop_bounds_runs_on_the_old_interpreter(triton_36_interpreter):
    ops = kernels.triton_kernels()  # loading the kernels for the interpreter applies the fix
    paged = make_paged([37, 5], 2, 64, 16, torch.float32)
    q = torch.randn(2, 4, 64, generator=torch.Generator().manual_seed(0))
    out = ops["triton_decode"].paged_attention_decode(q, paged.k_cache, paged.v_cache, paged.block_tables,
                                                      paged.context_lens, num_splits=2)
    ref = reference.paged_attention_decode(q, *paged.clean(), paged.block_tables, paged.context_lens)
    assert_close(out, ref, torch.float32)


def test_installed_interpreter_indexes_after_apply(interpreter):
    interpreter_compat.apply()
    assert interpreter_compat.index_works(interpreter)
