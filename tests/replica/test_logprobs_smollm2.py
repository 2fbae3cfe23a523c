"""Log-probabilities on the real default model equal Hugging Face's log-softmax within 1e-4
(float32, CPU): the chosen tokens', the top k's and the prompt's, with chunked prefill, after
preemption (recompute and swap) and after a migration mid-prefill and mid-decode (tier 3)."""
from __future__ import annotations

import pytest
import torch

from shunter import LLM, SamplingParams
from shunter.replica.engine_protocol import EngineOutput
from tests.hf_reference import hf_log_softmax

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4
K = 5
QUESTIONS = [
    "The capital of France is",
    "Explain, step by step and with an example, how a hump yard sorts freight cars into trains by "
    "destination, and why gravity makes it faster than flat shunting with a locomotive.",
    "def fibonacci(n):",
    "Once upon a time, in a small town next to the mountains, there lived an old signalman who",
]
PARAMS = SamplingParams(max_tokens=10, temperature=0.0, logprobs=K, prompt_logprobs=K, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts(smollm2_folder) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    return [list(tokenizer(q).input_ids) for q in QUESTIONS]


def _llm(**settings) -> LLM:
    return LLM(model="smollm2-135m-instruct", device="cpu", check_invariants=True, **settings)


def assert_like_hf(folder, prompt: list[int], tokens: list[int], logprobs: list[dict], prompt_lps: list | None,
                   reference: torch.Tensor | None = None) -> None:
    """`logprobs` / `prompt_lps` in vLLM's shape (token first, then the top k) against HF's rows."""
    ref = reference if reference is not None else hf_log_softmax(folder, [prompt + tokens])[0]
    seq = prompt + tokens
    positions = list(zip(range(len(prompt), len(seq)), logprobs))
    if prompt_lps is not None:
        assert len(prompt_lps) == len(prompt) and prompt_lps[0] is None
        positions += list(zip(range(1, len(prompt)), prompt_lps[1:]))
    assert len(logprobs) == len(tokens)
    for q, at in positions:
        row = ref[q - 1]
        first, *top = at.items()
        assert first[0] == seq[q]
        assert abs(first[1].logprob - row[seq[q]].item()) < TOLERANCE
        more, at_least = (row > row[seq[q]] + TOLERANCE).sum(), (row >= row[seq[q]] - TOLERANCE).sum()
        assert more + 1 <= first[1].rank <= at_least  # its rank, but for ties within the tolerance
        for token, lp in at.items():
            assert abs(lp.logprob - row[token].item()) < TOLERANCE, (q, token)
        # The top K are HF's, but for ties at the K-th value (either order is right).
        kth = row.topk(K).values[-1].item()
        assert {t for t in row.topk(K).indices.tolist() if row[t] > kth + TOLERANCE} <= {
            t for t, lp in at.items() if lp.rank <= K}
        assert sum(lp.rank <= K for lp in at.values()) == K


@pytest.fixture(scope="module")
def reference(smollm2_folder, prompts):
    outs = _llm().generate(prompts, PARAMS, use_tqdm=False)
    tokens = [o.outputs[0].token_ids for o in outs]
    return tokens, hf_log_softmax(smollm2_folder, [p + t for p, t in zip(prompts, tokens)])


SETTINGS = {
    "plain": {},
    "chunked": {"max_num_batched_tokens": 16},
    "recompute": {"num_kv_blocks": 6, "max_num_batched_tokens": 32, "preemption_mode": "recompute"},
    "swap": {"num_kv_blocks": 6, "max_num_batched_tokens": 32, "preemption_mode": "swap", "swap_space": 0.05},
}


# Every setting async (the default); synchronously, the plain one and a preempting one (the
# log-probabilities come from the same sampler row either way; the suite must stay short).
@pytest.mark.parametrize("setting,async_scheduling",
                         [(SETTINGS[name], True) for name in SETTINGS] + [(SETTINGS["plain"], False),
                                                                          (SETTINGS["swap"], False)],
                         ids=[f"{name}-async" for name in SETTINGS] + ["plain-sync", "swap-sync"])
def test_chosen_top_k_and_prompt_logprobs_equal_hf(smollm2_folder, prompts, reference, setting, async_scheduling):
    tokens, rows = reference
    llm = _llm(async_scheduling=async_scheduling, **setting)
    outs = llm.generate(prompts, PARAMS, use_tqdm=False)
    if "preemption_mode" in setting:
        assert llm.engine.stats().num_preemptions > 0
    for prompt, want, row, out in zip(prompts, tokens, rows, outs):
        sample = out.outputs[0]
        assert sample.token_ids == want
        assert_like_hf(smollm2_folder, prompt, want, sample.logprobs, out.prompt_logprobs, row)
        assert sample.cumulative_logprob == pytest.approx(sum(next(iter(d.values())).logprob for d in sample.logprobs))


def test_after_migration_mid_prefill_and_mid_decode(smollm2_folder, prompts, reference):
    """The engine's migration half, as the router drives it: tokens (and their log-probabilities)
    the source drained at the export are sent from the state; the target finishes the prompt."""
    tokens, rows = reference
    a, b = _llm(max_num_batched_tokens=16).engine, _llm(max_num_batched_tokens=16).engine
    prompt = prompts[1]
    a.add_request("m", prompt, PARAMS)
    sent: list[int] = []
    logprobs: list = []
    prompt_lps = None

    def take(outs: list[EngineOutput]) -> None:
        nonlocal prompt_lps
        for o in outs:
            sent.extend(o.new_token_ids)
            logprobs.extend(o.new_logprobs)
            prompt_lps = o.prompt_logprobs if o.prompt_logprobs is not None else prompt_lps

    def move(src, dst) -> None:
        state = src.export_request("m")
        n = len(sent)
        take([EngineOutput("m", state.output_token_ids[n:], len(state.output_token_ids),
                           new_logprobs=state.output_logprobs[n:],
                           prompt_logprobs=state.prompt_logprobs if n == 0 and state.output_token_ids else None)])
        dst.import_request(state)

    take(a.step() + a.step())
    assert 0 < a.scheduler.requests["m"].num_computed_tokens < len(prompt)
    move(a, b)
    while len(b.scheduler.requests["m"].output_token_ids) < 4:
        take(b.step())
    move(b, a)
    while a.has_unfinished_requests():
        take(a.step())
    assert sent == tokens[1]
    from shunter.replica.output_collector import OutputCollector

    as_dicts = OutputCollector()._position
    assert_like_hf(smollm2_folder, prompt, sent, [as_dicts(p) for p in logprobs],
                   [None] + [as_dicts(p) for p in prompt_lps[1:]], rows[1])
