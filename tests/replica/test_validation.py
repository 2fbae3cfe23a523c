"""The request validator's prompt check: every bad id is named, good prompts of any length pass."""
import pytest

from shunter.replica.engine_protocol import ModelLimits
from shunter.replica.validation import validate_request
from shunter.sampling_params import SamplingParams

LIMITS = ModelLimits(vocab_size=100, max_model_len=10_000, block_size=16, num_kv_blocks=1_000)


@pytest.mark.parametrize("bad", [None, "7", 1.0, -1, 100, 10**20])
def test_a_bad_token_id_anywhere_is_named(bad):
    prompt = [1, 2, 3, bad, 4]
    with pytest.raises(ValueError, match=rf"prompt_token_ids: token id {bad!r} is outside the vocabulary \[0, 100\)"):
        validate_request(prompt, SamplingParams(max_tokens=4), LIMITS)


def test_good_prompts_pass_booleans_and_int_subclasses_included():
    import enum

    class Id(enum.IntEnum):
        FIVE = 5

    for prompt in ([0, 99] * 2_000, [True, 3], [Id.FIVE, 6]):
        validate_request(prompt, SamplingParams(max_tokens=4), LIMITS)
