"""The oracle: greedy tokens from the engine equal Hugging Face `generate` on the real default
model, token for token, however the engine schedules, chunks, caches and preempts (tier 3).

Both sides run in float32 on the CPU, also on a machine with a GPU (where `LLM` would otherwise
pick CUDA and bfloat16); the GPU path has its own near-tie test (test_gpu_engine.py). Every test
runs twice: with async scheduling (the default) and without (a test that takes a policy: under fcfs
only)."""
from __future__ import annotations

import pytest
import torch

from shunter import LLM, SamplingParams
from tests.hf_reference import hf_greedy

pytestmark = pytest.mark.slow

MAX_TOKENS = 16
SYSTEM = (
    "You are a careful assistant for a railway company. Answer in one short paragraph, "
    "name the rules you rely on, and never invent timetables. "
)
QUESTIONS = [
    "Hi!",
    "What is a shunting yard?",
    "Write a haiku about trains at night.",
    "List three prime numbers.",
    "Explain, step by step and with an example, how a hump yard sorts freight cars into trains by "
    "destination, and why gravity makes it faster than flat shunting with a locomotive.",
    "Translate 'good morning' into French.",
    "1, 2, 3, 5, 8, 13,",
    "def fibonacci(n):",
    "Summarize the history of the steam locomotive from Trevithick to the end of steam in Britain, "
    "mentioning at least four engineers and the gauge war, in no more than five sentences.",
    "Why is the sky blue?",
    "The capital of France is",
    "Once upon a time, in a small town next to the mountains, there lived an old signalman who",
    "What does a dispatcher do?",
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    return [list(tokenizer(q).input_ids) for q in QUESTIONS]


@pytest.fixture(scope="module")
def shared_prompts(tokenizer) -> list[list[int]]:
    return [list(tokenizer(SYSTEM + q).input_ids) for q in QUESTIONS[:6]]


@pytest.fixture(scope="module")
def reference(smollm2_folder, prompts, shared_prompts):
    return hf_greedy(smollm2_folder, prompts + shared_prompts, MAX_TOKENS)


ASYNC_SCHEDULING = {"value": True}


# The synchronous path differs from the async one in the pipeline, not in what a policy decides:
# a test that takes a policy runs synchronously under fcfs only, the other policies async only
# (each case is ~5-10 s on the CI's 2 cores, and the suite must stay well under 15 minutes).
SYNC_POLICIES = {"fcfs"}
# What the pipeline does not change (text, stop strings, the chat template, prefix-cache hits) runs async only.
ASYNC_ONLY = {"test_text_and_stop_strings", "test_chat_renders_the_template_and_keeps_the_tokens",
              "test_shared_prefixes_hit_the_cache"}


@pytest.fixture(autouse=True, params=[True, False], ids=["async", "sync"])
def scheduling(request):
    policy = getattr(request.node, "callspec", None) and request.node.callspec.params.get("policy")
    if not request.param and policy and policy not in SYNC_POLICIES:
        pytest.skip("a test that takes a policy runs synchronously under fcfs only (the async cases cover the policies)")
    if not request.param and request.node.originalname in ASYNC_ONLY:
        pytest.skip("runs async only: the synchronous pipeline renders, stops and hits the cache alike")
    ASYNC_SCHEDULING["value"] = request.param


def oracle_llm(**settings) -> LLM:
    """The engine under test, pinned to the CPU like the reference."""
    return LLM(model="smollm2-135m-instruct", device="cpu", async_scheduling=ASYNC_SCHEDULING["value"], **settings)


def test_oracle_engine_stays_on_the_cpu_where_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    runner = oracle_llm(num_kv_blocks=4).engine.runner
    assert runner.device.type == "cpu" and runner.dtype == torch.float32


def engine_greedy(prompts: list[list[int]], **settings) -> tuple[list[list[int]], LLM]:
    llm = oracle_llm(check_invariants=True, **settings)
    outs = llm.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0))
    assert llm.engine.stats().kv_blocks_in_use == 0
    return [o.outputs[0].token_ids for o in outs], llm


def test_plain(prompts, reference):
    got, _ = engine_greedy(prompts)
    assert got == reference[: len(prompts)]


# A preemption mode acts the same on whichever victim a policy picks: every policy runs under one
# mode at least and every mode under three policies or more (fcfs under all three, synchronously
# too; the whole 7 x 3 matrix took ~3 minutes of the CI's 15). auto picks recompute or swap by
# measured costs. Each case runs out of KV blocks, so it preempts (asserted).
POLICY_MODES = [("fcfs", "recompute"), ("fcfs", "swap"), ("fcfs", "auto"), ("sjf", "swap"), ("mlq", "recompute"),
                ("priority", "swap"), ("slo", "recompute"), ("static", "swap"), ("rad", "recompute"), ("rad", "auto")]


@pytest.mark.parametrize("policy,mode", POLICY_MODES, ids=lambda v: v)
def test_every_policy_and_preemption_mode_keeps_the_tokens(prompts, reference, policy, mode):
    """Policies reorder work and pick victims; under memory and seat pressure, with mixed
    classes and output hints, the tokens stay HF's."""
    llm = oracle_llm(check_invariants=True, policy=policy, num_kv_blocks=14,
              preemption_mode=mode, swap_space=0.05, max_num_batched_tokens=64, max_num_seqs=8)
    params = [SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, priority=("interactive", "batch")[i % 2],
                             expected_output_tokens=(None, 8, 64)[i % 3]) for i in range(len(prompts))]
    outs = llm.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in outs] == reference[: len(prompts)]
    stats = llm.engine.stats()
    assert stats.kv_blocks_in_use == 0
    assert stats.num_preemptions > 0 or policy == "static"
    if mode == "swap":
        assert stats.num_swaps > 0 or stats.num_preemptions == 0  # every preemption in swap mode swaps


def test_tiny_token_budget_forces_chunking(prompts, reference):
    got, llm = engine_greedy(prompts, max_num_batched_tokens=16)
    assert got == reference[: len(prompts)]


def test_shared_prefixes_hit_the_cache(prompts, shared_prompts, reference):
    llm = oracle_llm(check_invariants=True)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    first = llm.generate(shared_prompts[:1], params)  # warms the cache with the system prompt
    rest = llm.generate(shared_prompts[1:], params)
    assert [o.outputs[0].token_ids for o in first + rest] == reference[len(prompts):]
    assert all(o.num_cached_tokens >= 16 for o in rest)
    assert llm.engine.stats().prefix_hit_rate > 0


@pytest.mark.parametrize("policy", ["fcfs", "rad"])
def test_cache_aware_order_keeps_the_tokens(prompts, shared_prompts, reference, policy):
    """Waiting requests reordered by their cached prefix blocks, under KV pressure with shared
    and unshared prompts mixed: the tokens stay HF's, and the shared prefix is hit."""
    llm = oracle_llm(check_invariants=True, policy=policy, cache_aware_order=True, num_kv_blocks=20,
                     max_num_batched_tokens=64, max_num_seqs=3)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    llm.generate(shared_prompts[:1], params)  # the system prompt's blocks cached
    mixed = [p for pair in zip(prompts[:6], shared_prompts[1:]) for p in pair]
    want = [r for pair in zip(reference[:6], reference[len(prompts) + 1:]) for r in pair]
    outs = llm.generate(mixed, params)
    assert [o.outputs[0].token_ids for o in outs] == want
    assert llm.engine.stats().prefix_hits > 0 and llm.engine.stats().kv_blocks_in_use == 0


def test_text_and_stop_strings(prompts, reference, tokenizer):
    llm = oracle_llm()
    out = llm.generate([prompts[1]], SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0))[0].outputs[0]
    assert out.text == tokenizer.decode(reference[1], skip_special_tokens=True)
    words = out.text.split()
    stop = words[len(words) // 2]
    cut = llm.generate([prompts[1]], SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, stop=[stop]))[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.text == out.text[: out.text.index(stop)]


def test_chat_renders_the_template_and_keeps_the_tokens(tokenizer):
    llm = oracle_llm()
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS[:2]]
    chats = llm.chat(conversations, SamplingParams(max_tokens=8, temperature=0.0), use_tqdm=False)
    for conversation, out in zip(conversations, chats):
        text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        assert out.prompt_token_ids == list(tokenizer(text, add_special_tokens=False).input_ids)
        [plain] = llm.generate([out.prompt_token_ids], SamplingParams(max_tokens=8, temperature=0.0), use_tqdm=False)
        assert out.outputs[0].token_ids == plain.outputs[0].token_ids and out.outputs[0].text
    with pytest.raises(ValueError, match=r"^messages\[0\]\[0\]"):
        llm.chat([{"role": "user"}])
