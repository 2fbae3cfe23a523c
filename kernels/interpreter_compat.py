"""Keep Triton's interpreter working with numpy >= 2.4 on Triton releases before the fix.

In the interpreter a scalar is a numpy array of shape (1,). Triton 3.6 turns it into a Python
int with `int(array)` when a kernel loops `for n in range(start, end, BLOCK)` over loaded bounds;
numpy 2.4 refuses that ("only 0-dimensional arrays can be converted to Python scalars"), so every
such kernel fails under `TRITON_INTERPRET=1`. Later Triton releases squeeze the array first.
`apply()` makes an affected interpreter do the same, and leaves a working one alone; the compiled
path is never touched.
"""
from __future__ import annotations

import operator
from types import SimpleNamespace

import numpy as np


def _squeezed_index(self) -> int:
    return int(self.handle.data.squeeze())


def index_works(interpreter) -> bool:
    """Whether the interpreter turns a shape-(1,) scalar into an index (probed, not guessed from versions)."""

    class Probe:
        pass

    scope = interpreter._LangPatchScope()
    interpreter._patch_lang_tensor(Probe, scope)
    try:
        probe = Probe()
        probe.handle = SimpleNamespace(data=np.array([3], dtype=np.int32))
        return operator.index(probe) == 3
    except (TypeError, DeprecationWarning):
        return False
    finally:
        scope.restore()


def apply() -> bool:
    """Patch the interpreter's scalar-to-index conversion where it fails; True when patched (now or before)."""
    from triton.runtime import interpreter

    if getattr(interpreter._patch_lang_tensor, "_shunter_squeezes", False):
        return True
    if not hasattr(interpreter, "_LangPatchScope") or index_works(interpreter):
        return False
    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", _squeezed_index)  # restored with the rest after each launch

    patch_lang_tensor._shunter_squeezes = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True
