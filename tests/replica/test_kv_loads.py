"""Loads from the CPU tier beside the steps (`replica/kv_loads.py`), on the fake runner, whose KV
check fails a step that reads a block the load has not filled: a request waits in its seat
(LOADING) until its load lands; one whose load takes longer than `cpu_load_timeout_s` computes
those tokens instead, and the blocks the late copy writes are held until it lands; a request
that leaves while loading gives everything back. The tokens equal the reference every time."""
from __future__ import annotations

import pytest

from shunter import SamplingParams
from shunter.clock import FakeClock
from shunter.replica.engine_config import EngineConfig
from shunter.replica.request import RequestStatus
from tests.replica.fakes import make_engine, prompt, reference_output, run_to_completion

TIMEOUT_S = 0.05  # the fake runner's steps take 0.01 s each
PARAMS = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


def engine_with_a_prefix_in_the_cpu_tier(**settings):
    """An engine whose device has evicted a 64-token prompt (4 blocks) that its CPU tier holds."""
    engine = make_engine(num_blocks=8, num_cpu_blocks=32, clock=FakeClock(), cpu_kv_gib=1.0,
                         cpu_load_timeout_s=TIMEOUT_S, **settings)
    engine.add_request("first", prompt(64, seed=1), PARAMS)
    run_to_completion(engine)
    engine.add_request("filler", prompt(100, seed=2), SamplingParams(max_tokens=2, temperature=0.0))
    run_to_completion(engine)  # its steps copy the first prompt's blocks to the CPU, then evict them
    assert len(engine.kv.cpu_tier) >= 4
    return engine


def test_a_request_waits_in_its_seat_until_its_load_lands():
    engine = engine_with_a_prefix_in_the_cpu_tier()
    engine.runner.load_delay_s = 0.03
    again = prompt(64, seed=1) + [5, 6]
    engine.add_request("again", again, PARAMS)
    engine.step()
    request = engine.scheduler.requests["again"]
    assert request.status is RequestStatus.LOADING and request.num_computed_tokens == 64
    loaded = 16 * len(engine.kv.loads[request].pairs)  # the device kept the rest of the prompt's blocks
    assert loaded > 0 and engine.stats().num_running == 1 and not engine.scheduler.running
    engine.step()
    assert request.status is RequestStatus.LOADING  # 0.01 s later: still on its way
    done = run_to_completion(engine)
    assert done["again"] == reference_output(again, 6, ignore_eos=True)
    stats = engine.stats()
    assert stats.prefix_hits_cpu == loaded and stats.cpu_load_timeouts == 0
    assert stats.kv_blocks_in_use == 0 and not engine.kv.loads and not engine.kv.cpu_tier.reading


def test_a_load_that_times_out_is_computed_instead_and_its_blocks_wait_for_the_copy():
    engine = engine_with_a_prefix_in_the_cpu_tier()
    engine.runner.load_delay_s = 1.0  # lands long after the timeout
    again = prompt(64, seed=1) + [5, 6]
    engine.add_request("again", again, PARAMS)
    engine.step()
    request = engine.scheduler.requests["again"]
    loaded = len(engine.kv.loads[request].pairs)
    done = run_to_completion(engine)
    assert done["again"] == reference_output(again, 6, ignore_eos=True)
    stats = engine.stats()
    assert stats.cpu_load_timeouts == 1 and stats.prefix_hits_cpu == 0
    assert stats.num_recomputed_tokens >= 16 * loaded and request.num_cached_tokens == 64 - 16 * loaded
    assert stats.kv_blocks_in_use == loaded  # the late copy's blocks: held, not handed out
    engine.clock.advance(1.0)
    engine.step()  # the copy lands; its blocks come back
    assert engine.stats().kv_blocks_in_use == 0 and not engine.kv.abandoned_loads
    assert not engine.kv.cpu_tier.reading


def test_the_blocks_of_a_late_copy_never_go_to_another_request():
    """While the given-up copy is on its way, other requests take every block they can; when it
    lands it writes the blocks it was given, which the fake's KV check would catch in theirs."""
    engine = engine_with_a_prefix_in_the_cpu_tier()
    engine.runner.load_delay_s = 0.2
    again = prompt(64, seed=1) + [5, 6]
    engine.add_request("again", again, PARAMS)
    for i in range(3):
        engine.add_request(f"other{i}", prompt(40, seed=10 + i), SamplingParams(max_tokens=20, temperature=0.0))
    done = run_to_completion(engine)
    assert done["again"] == reference_output(again, 6, ignore_eos=True)
    for i in range(3):
        assert done[f"other{i}"] == reference_output(prompt(40, seed=10 + i), 20)
    assert engine.stats().cpu_load_timeouts >= 1  # preempted ones come back to the CPU tier, and wait again


@pytest.mark.parametrize("how", ["abort", "export"])
def test_a_request_that_leaves_while_loading_gives_everything_back(how):
    engine = engine_with_a_prefix_in_the_cpu_tier()
    engine.runner.load_delay_s = 0.03
    engine.add_request("again", prompt(64, seed=1) + [5], PARAMS)
    engine.step()
    request = engine.scheduler.requests["again"]
    assert request.status is RequestStatus.LOADING
    loaded = len(engine.kv.loads[request].pairs)
    if how == "abort":
        assert engine.abort_request("again").finish_reason == "abort"
    else:
        state = engine.export_request("again")
        assert state.kv is None and state.num_computed_tokens == 0  # its KV is not all there: it recomputes
    assert engine.kv.num_blocks_in_use() == loaded  # the copy still writes them
    engine.clock.advance(0.05)
    engine.step()
    assert engine.kv.num_blocks_in_use() == 0 and not engine.kv.loads and not engine.kv.abandoned_loads
    engine.kv.check_invariants(set())


def test_a_load_timeout_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="cpu_load_timeout_s must be > 0"):
        EngineConfig(cpu_load_timeout_s=0)
