"""Turn a parsed OpenAI request into the router requests that answer it, or a message naming the field.

A request becomes one router request per choice: each prompt of a completions request times
`n` (sample i of a prompt draws with `seed + i` when a seed is given, as `LLM.generate` does).
Text is tokenized as the gRPC frontend does (a prompt with the tokenizer's special tokens,
messages through the model's chat template, `replica/chat.py`), and every router request passes
the one validator (`replica/validation.py: validate_request`) before any is placed, so a bad
request costs nothing on a replica. Messages start with the field's name in the OpenAI request.
Log-probabilities are asked of the engine as `SamplingParams.logprobs` (completions' `logprobs`,
chat's `top_logprobs`, 0 when only `logprobs: true`), and the prompt's too with `echo`.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from shunter.errors import InvalidArgument
from shunter.logprobs import MAX_LOGPROBS
from shunter.replica.chat import chat_prompt_ids
from shunter.replica.replica_core import ReplicaInfo
from shunter.replica.validation import validate_request
from shunter.router.http.protocol import MAX_PROMPTS, ChatCompletionRequest, CompletionRequest, SamplingFields
from shunter.sampling_params import SamplingParams
from shunter.structured_output import StructuredOutput


@dataclass
class Choice:
    """One router request: choice `index` of the answer, for prompt `prompt_index`."""

    index: int
    prompt_index: int
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    echo: str | None = None  # the prompt's text, ahead of the choice's (completions' `echo`)


@dataclass
class Plan:
    id: str
    prompt_lengths: list[int]  # tokens per prompt, for usage (a prompt counts once, whatever n)
    choices: list[Choice]


@dataclass
class LogprobsAsked:
    """The top k per output token (None: no log-probabilities) and per prompt token (None: not the prompt's)."""

    output: int | None = None
    prompt: int | None = None


def _params(req: SamplingFields, max_tokens: int, sample: int, logprobs: LogprobsAsked,
            structured: StructuredOutput | None) -> SamplingParams:
    slo = req.slo
    return SamplingParams(
        max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
        seed=None if req.seed is None else (req.seed + sample) % 2**63, stop=list(req.stop),
        ignore_eos=req.ignore_eos, logprobs=logprobs.output, prompt_logprobs=logprobs.prompt,
        priority=req.priority, ttft_ms=slo.ttft_ms if slo else None, tbt_ms=slo.tbt_ms if slo else None,
        structured_output=structured)


def _structured(req: SamplingFields) -> StructuredOutput | None:
    """The output's shape from `response_format` or `structured_outputs` (checked once for all choices)."""
    fmt, asked = req.response_format, req.structured_outputs
    if fmt is not None and fmt.type != "text" and asked is not None:
        raise InvalidArgument("response_format: send response_format or structured_outputs, not both")
    if asked is not None:
        fields, field_of = asked.model_dump(by_alias=True, exclude_none=True), None
    elif fmt is None or fmt.type == "text":
        return None
    elif fmt.type == "json_object":
        fields, field_of = {"json_object": True}, "response_format"
    elif fmt.json_schema is None:
        raise InvalidArgument("response_format.json_schema: required when type is json_schema")
    else:
        fields, field_of = {"json": fmt.json_schema.schema_}, "response_format.json_schema.schema"
    try:
        return StructuredOutput(**fields)
    except ValueError as e:
        message = str(e).removeprefix("structured_output")
        if field_of is None:
            raise InvalidArgument("structured_outputs" + message) from e
        raise InvalidArgument(field_of + message[message.index(":"):]) from e


def _top_k(value: int | None, field: str) -> int | None:
    if value is not None and value > MAX_LOGPROBS:
        raise InvalidArgument(f"{field}: at most {MAX_LOGPROBS} per token, got {value}")
    return value


def _plan(prefix: str, req: SamplingFields, prompts: list[list[int]], fields: list[str], max_tokens: list[int],
          info: ReplicaInfo, max_tokens_field: str, logprobs: LogprobsAsked,
          echoes: list[str | None] | None = None) -> Plan:
    plan_id = f"{prefix}-{uuid.uuid4().hex}"
    choices = []
    structured = _structured(req)
    for p, (ids, field, limit) in enumerate(zip(prompts, fields, max_tokens)):
        for sample in range(req.n):
            params = _params(req, limit, sample, logprobs, structured)
            try:
                validate_request(ids, params, info.limits, prompt_field=field)
            except ValueError as e:
                raise InvalidArgument(_rename(str(e), "max_tokens", max_tokens_field)) from e
            index = p * req.n + sample
            rid = plan_id if len(prompts) * req.n == 1 else f"{plan_id}-{index}"
            choices.append(Choice(index, p, rid, ids, params, echoes[p] if echoes else None))
    return Plan(plan_id, [len(ids) for ids in prompts], choices)


def _rename(message: str, field: str, sent_as: str) -> str:
    return sent_as + message[len(field):] if message.startswith(field + ":") else message


def completion_plan(req: CompletionRequest, info: ReplicaInfo) -> Plan:
    k = _top_k(req.logprobs, "logprobs")
    if len(req.prompt) > MAX_PROMPTS:
        raise InvalidArgument(f"prompt: at most {MAX_PROMPTS} prompts in one request, got {len(req.prompt)}")
    single = len(req.prompt) == 1
    fields = ["prompt" if single else f"prompt[{i}]" for i in range(len(req.prompt))]
    prompts = [_tokenize(p, field, info) for p, field in zip(req.prompt, fields)]
    max_tokens = req.max_tokens if req.max_tokens is not None else 16  # OpenAI's default for completions
    echoes = [_text(p, ids, info) for p, ids in zip(req.prompt, prompts)] if req.echo else None
    return _plan("cmpl", req, prompts, fields, [max_tokens] * len(prompts), info, "max_tokens",
                 LogprobsAsked(k, k if req.echo else None), echoes)


def _text(prompt: str | list[int], ids: list[int], info: ReplicaInfo) -> str:
    """The echoed prompt: as sent, or its tokens' text (none without a tokenizer)."""
    if isinstance(prompt, str):
        return prompt
    return info.tokenizer.decode(ids) if info.tokenizer is not None else ""


def _tokenize(prompt: str | list[int], field: str, info: ReplicaInfo) -> list[int]:
    if not isinstance(prompt, str):
        return list(prompt)
    if info.tokenizer is None:
        raise InvalidArgument(f"{field}: this model has no tokenizer; send token ids")
    if not prompt:
        raise InvalidArgument(f"{field}: must not be empty")
    return list(info.tokenizer(prompt).input_ids)


def chat_plan(req: ChatCompletionRequest, info: ReplicaInfo) -> Plan:
    top = _top_k(req.top_logprobs, "top_logprobs")
    if top is not None and not req.logprobs:
        raise InvalidArgument("top_logprobs: needs logprobs: true")
    if None not in (req.max_tokens, req.max_completion_tokens) and req.max_tokens != req.max_completion_tokens:
        raise InvalidArgument("max_completion_tokens: differs from max_tokens; send one of them")
    try:
        ids = chat_prompt_ids(info.tokenizer, [m.model_dump() for m in req.messages])
    except ValueError as e:
        raise InvalidArgument(str(e)) from e
    sent_as = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = req.max_completion_tokens or req.max_tokens or _room(len(ids), info)
    return _plan("chatcmpl", req, [ids], ["messages"], [max_tokens], info, sent_as,
                 LogprobsAsked(top or 0 if req.logprobs else None))


def _room(prompt_tokens: int, info: ReplicaInfo) -> int:
    """A chat request without a limit may fill the context (and one replica's KV blocks), as OpenAI's does."""
    limits = info.limits
    return max(1, min(limits.max_model_len, limits.num_kv_blocks * limits.block_size) - prompt_tokens)
