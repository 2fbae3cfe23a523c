"""Speculative decoding by n-gram: the proposer finds the latest earlier occurrence of the context's
end; accepting keeps the drafts before the first rejected one and its replacement; speculative
sampling keeps the target's distribution (chi-square); drafts the step will not compute are taken
back; and on the real model greedy output is the same token for token as without speculation
under every policy, with chunks cut short by a small budget, and under preemption, while drafts
are accepted, and a sampled request's tokens are fixed by its seed whatever shares its batch.
A draft model proposes the same way: greedy output unchanged whether it agrees with the target
or not, its KV caught up after rejections and given back, and one of another vocabulary refused."""
from __future__ import annotations

import argparse

import pytest
import torch

from shunter import LLM, SamplingParams
from shunter.replica.draft_model import _DraftKV
from shunter.replica.engine_config import EngineConfig
from shunter.replica.policies import POLICIES
from shunter.replica.request import Request
from shunter.replica.sampler import target_probs, verify_drafts
from shunter.replica.speculative import NgramProposer, Speculator, check_draft_model, propose_ngram
from shunter.replica.step_inputs import SamplingInputs


def test_the_proposal_follows_the_latest_earlier_occurrence_of_the_longest_suffix():
    assert propose_ngram([1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3], 2, 3) == [7, 1]  # the latest 1 2 3, not the first
    assert propose_ngram([5, 1, 2, 8, 8, 2], 3, 3) == [8, 8, 2]  # only the 1-gram "2" occurs: what followed it
    assert propose_ngram([4, 5, 6], 2, 3) == []
    assert propose_ngram([7, 7, 7], 4, 2) == [7]  # 7 7 ends at index 1: one token follows it


def _request(output: list[int], max_tokens: int = 50) -> Request:
    req = Request("r", [1, 2, 3], SamplingParams(max_tokens=max_tokens, temperature=0), 0.0, output_token_ids=output)
    req.num_computed_tokens = req.num_tokens - 1
    return req


def test_drafts_are_taken_back_where_the_step_does_not_compute_them():
    spec = Speculator(num_tokens=3, max_model_len=100, proposer=NgramProposer(ngram_max=2))
    short, skipped = _request([1, 2, 3, 4, 5, 1, 2]), _request([9, 1, 2, 3, 9, 1])
    short.request_id, skipped.request_id = "short", "skipped"
    spec.propose([short, skipped])
    assert short.output_token_ids[7:] == [3, 4, 5] and skipped.output_token_ids[6:] == [2, 3, 9]
    assert spec.fit_to({"short": 3}) == {"short": 2}  # its last token and 2 drafts fit in the chunk
    assert short.output_token_ids[7:] == [3, 4] and skipped.output_token_ids == [9, 1, 2, 3, 9, 1]


def test_no_drafts_where_fewer_than_two_tokens_remain():
    spec = Speculator(num_tokens=4, max_model_len=100, proposer=NgramProposer(ngram_max=2))
    near_end = _request([1, 2, 3, 1, 2], max_tokens=7)
    spec.propose([near_end])
    assert near_end.output_token_ids == [1, 2, 3, 1, 2]


def test_accepting_keeps_the_drafts_before_the_first_rejected_one_and_its_replacement():
    spec = Speculator(num_tokens=3, max_model_len=100, proposer=NgramProposer(ngram_max=2))
    assert spec.accept([5, 6, 7], [(True, 5), (True, 6), (False, 8)], bonus=9) == [5, 6, 8]
    assert spec.accept([5, 6, 7], [(True, 5), (True, 6), (True, 7)], bonus=9) == [5, 6, 7, 9]
    assert spec.accept([5, 6], [(False, 4), (True, 6)], bonus=1) == [4]  # nothing after a rejection counts
    assert (spec.stats.drafted, spec.stats.accepted) == (8, 5)


def _first_tokens(logits: torch.Tensor, params: SamplingParams, draft: int, n: int) -> list[int]:
    """The first token of `n` speculating requests (seeds 0..n-1), each with `draft` as its draft."""
    rows = logits.expand(n, -1)
    s = SamplingInputs.of([params] * n, list(range(n)), [0] * n, logits.shape[-1], "cpu")
    accepted, replacement = verify_drafts(rows, s, torch.full((n,), draft))
    return torch.where(accepted, draft, replacement).tolist()


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=4),
                                    SamplingParams(temperature=1.3, top_p=0.8)])
@pytest.mark.parametrize("draft", [0, 3])  # the likeliest token, and a middling one
def test_speculative_sampling_keeps_the_targets_distribution(params, draft):
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0]])
    s = SamplingInputs.of([params], [0], [0], 6, "cpu")
    p = target_probs(logits, s)[0].double()
    n = 40_000
    counts = torch.bincount(torch.tensor(_first_tokens(logits, params, draft, n)), minlength=6).double()
    support = p > 0
    assert counts[~support].sum() == 0  # nothing outside top-k / top-p
    expected = p[support] * n
    chi2 = (((counts[support] - expected) ** 2) / expected).sum().item()
    assert chi2 < 20.5, (chi2, counts.tolist(), expected.tolist())  # df <= 5: p = 0.001


def test_a_greedy_draft_is_accepted_only_as_the_argmax():
    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 3.0, 1.0]])
    s = SamplingInputs.of([SamplingParams(temperature=0)] * 2, [0, 0], [0, 0], 3, "cpu")
    accepted, replacement = verify_drafts(logits, s, torch.tensor([1, 2]))
    assert accepted.tolist() == [True, False] and replacement.tolist() == [1, 1]


def test_an_unknown_method_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="speculative must be one of ngram, draft"):
        EngineConfig(speculative="draft-model")
    config = EngineConfig(speculative="ngram")
    assert not config.async_scheduling and not config.persistent_batch


# ---- the real model ---------------------------------------------------------------------------
PASSAGE = ("A hump yard sorts freight cars by rolling them over a small hill. Each car runs down into the "
           "track of its train, and retarders slow it so that it couples gently with the cars already there.")
ASKS = [f"Repeat this text exactly:\n\n{PASSAGE}", f"Copy the first sentence of this text:\n\n{PASSAGE}"]
PARAMS = SamplingParams(max_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def prompts(smollm2_folder) -> list[list[int]]:
    from shunter.replica.chat import chat_prompt_ids

    llm = LLM(model="smollm2-135m-instruct", device="cpu")
    return [chat_prompt_ids(llm.tokenizer, [{"role": "user", "content": a}]) for a in ASKS], llm


@pytest.fixture(scope="module")
def reference(prompts) -> list[list[int]]:
    ids, llm = prompts
    return [o.outputs[0].token_ids for o in llm.generate(ids, PARAMS, use_tqdm=False)]


# rad times its step staircase at start-up up to the budget: a small one keeps that short on a CPU.
SETTINGS = {**{p: {"policy": p} for p in sorted(POLICIES)}, "rad": {"policy": "rad", "max_num_batched_tokens": 48},
            "chunks cut short": {"max_num_batched_tokens": 8},
            "recompute": {"num_kv_blocks": 10, "max_num_batched_tokens": 32, "preemption_mode": "recompute"}}


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_greedy_output_is_the_same_with_speculation(prompts, reference, setting):
    ids, _ = prompts
    llm = LLM(model="smollm2-135m-instruct", device="cpu", check_invariants=True, speculative="ngram",
              num_speculative_tokens=4, **SETTINGS[setting])
    got = [o.outputs[0].token_ids for o in llm.generate(ids, PARAMS, use_tqdm=False)]
    assert got == reference
    stats = llm.engine.speculator.stats
    assert stats.accepted > 10, stats  # the copying prompts take long drafts
    if setting == "recompute":
        assert llm.engine.scheduler.stats.num_preemptions > 0
    assert llm.engine.kv.num_blocks_in_use() == 0


@pytest.mark.slow
def test_sampled_requests_speculate_and_a_seed_still_fixes_their_tokens(prompts):
    ids, _ = prompts
    llm = LLM(model="smollm2-135m-instruct", device="cpu", check_invariants=True, speculative="ngram")
    params = SamplingParams(max_tokens=20, temperature=0.7, seed=7)
    first = [o.outputs[0].token_ids for o in llm.generate(ids, params, use_tqdm=False)]
    assert llm.engine.speculator.stats.accepted > 0
    again = [o.outputs[0].token_ids for o in llm.generate(ids[::-1], params, use_tqdm=False)][::-1]
    assert again == first and llm.engine.kv.num_blocks_in_use() == 0


# ---- a draft model ----------------------------------------------------------------------------
def test_the_draft_kv_holds_the_known_tokens_and_the_drafts_the_target_kept():
    kv = _DraftKV(known=4, ahead=[7, 8, 9])
    assert kv.valid([1, 2, 3, 4, 7, 8, 5]) == 6  # drafts 7 and 8 kept, 9 rejected (5 took its place)
    assert kv.valid([1, 2, 3, 4, 6]) == 4  # the first draft rejected
    assert kv.valid([1, 2, 3]) == 3  # fewer tokens than known (never in the engine; safe anyway)


@pytest.mark.parametrize("settings, error", [
    ({"speculative": "draft"}, "speculative_model: speculative='draft' needs a draft model"),
    ({"speculative": "ngram", "speculative_model": "random:tiny"}, "speculative_model: .* takes no draft model"),
    ({"speculative_draft_layers": 2}, "speculative_draft_layers: set without speculative_model"),
])
def test_draft_settings_that_do_not_fit_are_refused_naming_the_field(settings, error):
    with pytest.raises(ValueError, match=error):
        EngineConfig(**settings)
    assert EngineConfig(speculative_model="random:tiny").speculative == "draft"


def test_a_draft_of_another_vocabulary_is_refused_naming_the_flag(smollm2_folder):
    with pytest.raises(ValueError, match="speculative_model: random:tiny has a vocabulary of 512 tokens"):
        LLM(model="smollm2-135m-instruct", device="cpu", speculative_model="random:tiny")
    args = argparse.Namespace(model="smollm2-135m-instruct", speculative=None, speculative_model="random:tiny")
    with pytest.raises(ValueError, match="--speculative-model: random:tiny has a vocabulary of 512 tokens"):
        check_draft_model(args)
    with pytest.raises(ValueError, match="--speculative-model: 'nowhere' is no such file"):
        check_draft_model(argparse.Namespace(model="smollm2-135m-instruct", speculative=None, speculative_model="nowhere"))
    with pytest.raises(ValueError, match="speculative_draft_layers must be in 1..30"):
        LLM(model="smollm2-135m-instruct", device="cpu", speculative_model="smollm2-135m-instruct",
            speculative_draft_layers=31)


# The model as its own draft agrees with itself (every draft kept); cut to 8 layers it disagrees
# nearly always, so the draft KV is caught up after rejections.
DRAFTS = {"itself": {"speculative_draft_layers": None}, "itself, recompute": SETTINGS["recompute"], "first 8 layers": {"speculative_draft_layers": 8}}


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(DRAFTS))
def test_greedy_output_is_the_same_with_a_draft_model(prompts, reference, setting):
    ids, _ = prompts
    llm = LLM(model="smollm2-135m-instruct", device="cpu", check_invariants=True,
              speculative_model="smollm2-135m-instruct", num_speculative_tokens=3, **DRAFTS[setting])
    got = [o.outputs[0].token_ids for o in llm.generate(ids, PARAMS, use_tqdm=False)]
    assert got == reference
    stats = llm.engine.speculator.stats
    assert stats.drafted > 20 and (setting == "first 8 layers" or stats.accepted > 0.8 * stats.drafted), stats
    if setting == "itself, recompute":
        assert llm.engine.scheduler.stats.num_preemptions > 0
    assert llm.engine.kv.num_blocks_in_use() == 0 and llm.engine.runner.draft.num_blocks_in_use == 0
