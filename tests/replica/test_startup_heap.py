"""The first engine of a process freezes the start-up heap, so old-generation collections stop
rescanning torch's modules and the KV pool's block objects (`replica/startup_heap.py`)."""
from __future__ import annotations

import gc
import weakref

from shunter.replica import startup_heap
from shunter.replica.engine_config import EngineConfig
from shunter.testing.null_model import null_engine


class _Cyclic:
    def __init__(self) -> None:
        self.me = self


def test_the_first_engine_freezes_its_process_heap_with_its_block_pool(monkeypatch):
    monkeypatch.setattr(startup_heap, "_frozen", False)
    gc.unfreeze()
    engine = null_engine(EngineConfig(model="null", num_kv_blocks=64, max_num_seqs=4, max_num_batched_tokens=64))
    frozen = gc.get_freeze_count()
    assert frozen > 10_000  # the imported modules, at least
    assert startup_heap._frozen
    # Its blocks are frozen with it: a collection never walks them again.
    assert not any(b is engine.kv.pool.blocks[0] for b in gc.get_objects())
    # A second engine in the same process freezes nothing: it can still be collected when dropped.
    second = null_engine(EngineConfig(model="null", num_kv_blocks=64, max_num_seqs=4, max_num_batched_tokens=64))
    assert gc.get_freeze_count() == frozen
    assert any(b is second.kv.pool.blocks[0] for b in gc.get_objects())


def test_freezing_again_frees_the_garbage_an_earlier_freeze_kept(monkeypatch):
    monkeypatch.setattr(startup_heap, "_frozen", False)
    dropped = _Cyclic()
    alive = weakref.ref(dropped)
    gc.disable()  # no collection between freeze and drop but the ones asked for
    try:
        startup_heap.freeze_startup_heap()
        del dropped
        gc.collect()
        assert alive() is not None  # frozen garbage survives a collection
        assert not startup_heap.freeze_startup_heap()  # once per process
        assert startup_heap.freeze_startup_heap(again=True)
        assert alive() is None
    finally:
        gc.enable()
