"""The first engine of a process tunes the garbage collector for serving: the start-up heap is
frozen, so old-generation collections stop rescanning torch's modules and the KV pool's block
objects, and the young generation is collected less often (`replica/gc_tuning.py`)."""
from __future__ import annotations

import gc
import weakref

import pytest

from shunter.replica import gc_tuning
from shunter.replica.engine_config import EngineConfig
from shunter.testing.null_model import null_engine


class _Cyclic:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def untuned(monkeypatch):
    monkeypatch.setattr(gc_tuning, "_tuned", False)
    threshold = gc.get_threshold()
    gc.set_threshold(700, *threshold[1:])
    yield
    gc.set_threshold(*threshold)


def _engine():
    return null_engine(EngineConfig(model="null", num_kv_blocks=64, max_num_seqs=4, max_num_batched_tokens=64))


def test_the_first_engine_freezes_its_process_heap_with_its_block_pool(untuned):
    gc.unfreeze()
    engine = _engine()
    frozen = gc.get_freeze_count()
    assert frozen > 10_000  # the imported modules, at least
    assert gc.get_threshold()[0] == gc_tuning.YOUNG_THRESHOLD
    # Its blocks are frozen with it: a collection never walks them again.
    assert not any(b is engine.kv.pool.blocks[0] for b in gc.get_objects())
    # A second engine in the same process freezes nothing: it can still be collected when dropped.
    second = _engine()
    assert gc.get_freeze_count() == frozen
    assert any(b is second.kv.pool.blocks[0] for b in gc.get_objects())


def test_tuning_again_frees_the_garbage_an_earlier_freeze_kept(untuned):
    dropped = _Cyclic()
    alive = weakref.ref(dropped)
    gc.disable()  # no collection between freeze and drop but the ones asked for
    try:
        gc_tuning.tune_gc_for_serving()
        del dropped
        gc.collect()
        assert alive() is not None  # frozen garbage survives a collection
        assert not gc_tuning.tune_gc_for_serving()  # once per process
        assert gc_tuning.tune_gc_for_serving(again=True)
        assert alive() is None
    finally:
        gc.enable()
