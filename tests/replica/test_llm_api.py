"""The offline API in vLLM's shape: RequestOutput.outputs[i], n samples sharing the prompt's
blocks, chat messages, and errors that name the field."""
from __future__ import annotations

import pytest

from shunter import LLM, SamplingParams
from shunter.outputs import CompletionOutput, RequestOutput

PROMPT = [(7 * j) % 300 + 3 for j in range(40)]  # two full blocks of 16 and a partial one


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(model="random:tiny", num_kv_blocks=128, check_invariants=True)


def test_outputs_have_vllms_shape(llm):
    [out] = llm.generate([PROMPT], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True), use_tqdm=False)
    assert isinstance(out, RequestOutput) and out.finished and out.prompt is None and out.prompt_token_ids == PROMPT
    [sample] = out.outputs
    assert isinstance(sample, CompletionOutput) and sample.index == 0
    assert len(sample.token_ids) == 5 and sample.finish_reason == "length" and sample.text == ""  # no tokenizer
    assert out.metrics.first_token_time >= out.metrics.arrival_time


def test_n_samples_each_with_its_own_seed_sharing_the_prompt(llm):
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=100, n=3, ignore_eos=True)
    [out] = llm.generate([PROMPT], params, use_tqdm=False)
    assert [s.index for s in out.outputs] == [0, 1, 2]
    alone = [llm.generate([PROMPT], SamplingParams(max_tokens=12, temperature=1.0, seed=100 + i, ignore_eos=True),
                          use_tqdm=False)[0].outputs[0].token_ids for i in range(3)]
    assert [s.token_ids for s in out.outputs] == alone  # sample i draws with seed + i
    assert len({tuple(t) for t in alone}) == 3
    assert out.num_cached_tokens == 32  # the later samples found the prompt's two full blocks cached
    assert llm.engine.stats().kv_blocks_in_use == 0


def test_greedy_samples_agree(llm):
    [out] = llm.generate([PROMPT], SamplingParams(max_tokens=6, temperature=0, n=2, ignore_eos=True), use_tqdm=False)
    assert out.outputs[0].token_ids == out.outputs[1].token_ids


def test_bad_input_names_the_field_and_queues_nothing(llm):
    with pytest.raises(ValueError, match="^n must be"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="^prompt_token_ids: token id"):
        llm.generate([PROMPT, [1, 10**9]], SamplingParams(max_tokens=2), use_tqdm=False)
    with pytest.raises(ValueError, match="^messages: this model has no chat template"):
        llm.chat([{"role": "user", "content": "hi"}])
    assert not llm.engine.has_unfinished_requests()
