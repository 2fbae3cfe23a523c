"""Turn a parsed OpenAI request into the router requests that answer it, or a message naming the field.

A request becomes one router request per choice: each prompt of a completions request times
`n` (sample i of a prompt draws with `seed + i` when a seed is given, as `LLM.generate` does).
Text is tokenized as the gRPC frontend does (a prompt with the tokenizer's special tokens,
messages through the model's chat template, `replica/chat.py`), and every router request passes
the one validator (`replica/validation.py: validate_request`) before any is placed, so a bad
request costs nothing on a replica. Messages start with the field's name in the OpenAI request.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from shunter.errors import InvalidArgument
from shunter.replica.chat import chat_prompt_ids
from shunter.replica.replica_core import ReplicaInfo
from shunter.replica.validation import validate_request
from shunter.router.http.protocol import MAX_PROMPTS, ChatCompletionRequest, CompletionRequest, SamplingFields
from shunter.sampling_params import SamplingParams

NO_LOGPROBS = "the engine does not compute log-probabilities; leave it out"


@dataclass
class Choice:
    """One router request: choice `index` of the answer, for prompt `prompt_index`."""

    index: int
    prompt_index: int
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams


@dataclass
class Plan:
    id: str
    prompt_lengths: list[int]  # tokens per prompt, for usage (a prompt counts once, whatever n)
    choices: list[Choice]


def _params(req: SamplingFields, max_tokens: int, sample: int) -> SamplingParams:
    slo = req.slo
    return SamplingParams(
        max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
        seed=None if req.seed is None else (req.seed + sample) % 2**63, stop=list(req.stop),
        ignore_eos=req.ignore_eos, priority=req.priority,
        ttft_ms=slo.ttft_ms if slo else None, tbt_ms=slo.tbt_ms if slo else None)


def _plan(prefix: str, req: SamplingFields, prompts: list[list[int]], fields: list[str], max_tokens: list[int],
          info: ReplicaInfo, max_tokens_field: str) -> Plan:
    plan_id = f"{prefix}-{uuid.uuid4().hex}"
    choices = []
    for p, (ids, field, limit) in enumerate(zip(prompts, fields, max_tokens)):
        for sample in range(req.n):
            params = _params(req, limit, sample)
            try:
                validate_request(ids, params, info.limits, prompt_field=field)
            except ValueError as e:
                raise InvalidArgument(_rename(str(e), "max_tokens", max_tokens_field)) from e
            index = p * req.n + sample
            rid = plan_id if len(prompts) * req.n == 1 else f"{plan_id}-{index}"
            choices.append(Choice(index, p, rid, ids, params))
    return Plan(plan_id, [len(ids) for ids in prompts], choices)


def _rename(message: str, field: str, sent_as: str) -> str:
    return sent_as + message[len(field):] if message.startswith(field + ":") else message


def completion_plan(req: CompletionRequest, info: ReplicaInfo) -> Plan:
    if req.logprobs is not None:
        raise InvalidArgument(f"logprobs: {NO_LOGPROBS}")
    if len(req.prompt) > MAX_PROMPTS:
        raise InvalidArgument(f"prompt: at most {MAX_PROMPTS} prompts in one request, got {len(req.prompt)}")
    single = len(req.prompt) == 1
    fields = ["prompt" if single else f"prompt[{i}]" for i in range(len(req.prompt))]
    prompts = [_tokenize(p, field, info) for p, field in zip(req.prompt, fields)]
    max_tokens = req.max_tokens if req.max_tokens is not None else 16  # OpenAI's default for completions
    return _plan("cmpl", req, prompts, fields, [max_tokens] * len(prompts), info, "max_tokens")


def _tokenize(prompt: str | list[int], field: str, info: ReplicaInfo) -> list[int]:
    if not isinstance(prompt, str):
        return list(prompt)
    if info.tokenizer is None:
        raise InvalidArgument(f"{field}: this model has no tokenizer; send token ids")
    if not prompt:
        raise InvalidArgument(f"{field}: must not be empty")
    return list(info.tokenizer(prompt).input_ids)


def chat_plan(req: ChatCompletionRequest, info: ReplicaInfo) -> Plan:
    if req.logprobs:
        raise InvalidArgument(f"logprobs: {NO_LOGPROBS}")
    if req.top_logprobs is not None:
        raise InvalidArgument(f"top_logprobs: {NO_LOGPROBS}")
    if None not in (req.max_tokens, req.max_completion_tokens) and req.max_tokens != req.max_completion_tokens:
        raise InvalidArgument("max_completion_tokens: differs from max_tokens; send one of them")
    try:
        ids = chat_prompt_ids(info.tokenizer, [m.model_dump() for m in req.messages])
    except ValueError as e:
        raise InvalidArgument(str(e)) from e
    sent_as = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = req.max_completion_tokens or req.max_tokens or _room(len(ids), info)
    return _plan("chatcmpl", req, [ids], ["messages"], [max_tokens], info, sent_as)


def _room(prompt_tokens: int, info: ReplicaInfo) -> int:
    """A chat request without a limit may fill the context (and one replica's KV blocks), as OpenAI's does."""
    limits = info.limits
    return max(1, min(limits.max_model_len, limits.num_kv_blocks * limits.block_size) - prompt_tokens)
