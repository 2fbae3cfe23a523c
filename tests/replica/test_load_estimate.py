"""One load estimate: a request past its expected output never hides the others' growth."""
from __future__ import annotations

from shunter.replica.load_estimate import expected_blocks
from shunter.sampling_params import SamplingParams
from tests.replica.fakes import make_engine, prompt


def test_expected_blocks_counts_what_a_request_already_holds():
    params = SamplingParams(max_tokens=64, expected_output_tokens=16)
    assert expected_blocks(32, params, 16) == 3
    assert expected_blocks(32, SamplingParams(max_tokens=64), 16) == 6  # no hint: max_tokens
    assert expected_blocks(32, params, 16, num_tokens=80) == 5  # ran past its hint: at least what it has


def test_engine_growth_is_not_hidden_by_a_request_past_its_hint():
    engine = make_engine(num_blocks=64)
    # "over" expects 1 output token but will make 40: after a few steps it holds more than expected.
    engine.add_request("over", prompt(16, 1), SamplingParams(max_tokens=40, temperature=0, ignore_eos=True,
                                                              expected_output_tokens=1))
    for _ in range(20):
        engine.step()
    engine.add_request("fresh", prompt(16, 2), SamplingParams(max_tokens=64, temperature=0, ignore_eos=True))
    engine.step()  # "fresh" prefills its 16 tokens: holds 1 block, expects 16 + 64 tokens = 5 blocks
    # "over" holds 3 blocks against 2 expected: counted as 0 more, not -1 (which would say 3).
    assert engine.stats().blocks_expected_growth == 4
