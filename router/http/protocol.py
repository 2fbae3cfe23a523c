"""The OpenAI API's wire shapes that the HTTP gateway speaks: requests in, responses and chunks out.

Requests are strict where a mistake would otherwise pass silently: a field this server does not
take is an error naming it (the OpenAI API itself refuses unknown arguments), a string is not a
number, a number is not a boolean. Our extensions (`priority`, `slo`, `top_k`, `ignore_eos`,
`return_token_ids`) are ordinary fields here, so the official client sends them with
`extra_body`. A field that takes several shapes (`prompt`, `stop`, message `content`) is checked
by one function that names the shapes, instead of one pydantic error per union member.
Structured output comes as OpenAI's `response_format` (`json_object`, or `json_schema` with its
`schema`) or as vLLM's `structured_outputs` (`json`, `regex`, `choice`, `grammar`), on both
endpoints. Log-probabilities come in OpenAI's two shapes: completions' (`tokens`, `token_logprobs`,
`top_logprobs`, `text_offset`, the prompt's first with `echo`) and chat's (`content`, one entry
a token with its `top_logprobs`).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny, model_serializer

MAX_N = 16  # samples per prompt
MAX_PROMPTS = 64  # prompts in one completions request
MAX_STOP = 16  # stop strings, as in the gRPC API
MAX_MESSAGES = 1024
INT32_MAX = 2**31 - 1


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)  # bool is no token


def _prompt(value: Any) -> list[str] | list[list[int]]:
    """A string, a list of strings, a list of token ids, or a list of token-id lists -> a list of prompts."""
    if isinstance(value, str):
        return [value]
    if _is_token_ids(value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        return value
    if isinstance(value, list) and value and all(_is_token_ids(p) for p in value):
        return value
    raise ValueError("must be a string, a list of strings, a list of token ids or a list of token-id lists "
                     "(none of them empty)")


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value) or len(value) > MAX_STOP:
        raise ValueError(f"must be a non-empty string or a list of at most {MAX_STOP} non-empty strings")
    return value


def _content(value: Any) -> str:
    """A string, or a list of text parts ({"type": "text", "text": ...}) joined by newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.keys() == {"type", "text"} and p["type"] == "text"
                                       and isinstance(p["text"], str) for p in value):
        return "\n".join(p["text"] for p in value)
    raise ValueError('must be a string or a list of text parts {"type": "text", "text": "..."} '
                     "(this model reads text only)")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's extension, which load tools send: usage so far on every chunk


class Slo(Strict):
    """Our extension: latency targets the `slo` scheduling policy works to."""

    ttft_ms: float | None = Field(None, gt=0, allow_inf_nan=False)
    tbt_ms: float | None = Field(None, gt=0, allow_inf_nan=False)


class ChatMessage(Strict):
    role: str
    content: Annotated[str, BeforeValidator(_content)]


class JsonSchemaFormat(Strict):
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None  # accepted: every schema is enforced


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(Strict):
    """vLLM's extension: the output follows exactly one of these."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None


class SamplingFields(Strict):
    """What completions and chat requests share."""

    model: str | None = None  # None: the model this server serves
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: Annotated[list[str], BeforeValidator(_stop)] = []
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted, as OpenAI's abuse-monitoring tag; not used
    # Our extensions.
    priority: Literal["interactive", "batch"] = "interactive"
    slo: Slo | None = None
    top_k: int = Field(-1, ge=-1, le=INT32_MAX)
    ignore_eos: bool = False
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None  # vLLM's extension


class CompletionRequest(SamplingFields):
    prompt: Annotated[list[str] | list[list[int]], BeforeValidator(_prompt)]
    logprobs: int | None = Field(None, ge=0)  # the top k per token (at most MAX_LOGPROBS, checked with its message)
    echo: bool = False  # the prompt ahead of the text (and its log-probabilities, with `logprobs`)
    return_token_ids: bool = False  # our extension (vLLM's name): each choice also carries its `token_ids`


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)  # with `logprobs`: the top k per token (at most MAX_LOGPROBS)


# ---- responses ---------------------------------------------------------------------------------
class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class CompletionLogprobs(BaseModel):
    """Completions' log-probabilities: per token its text, log-probability (None for a prompt's
    first token, which nothing predicts), top k as {text: logprob}, and where it starts in `text`."""

    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class CompletionChoiceWithTokens(CompletionChoice):
    """A choice of a request with `return_token_ids`: the tokens of its text (a chunk's: new ones)."""

    token_ids: list[int]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[SerializeAsAny[CompletionChoice]]  # a CompletionChoiceWithTokens keeps its token_ids
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]  # the token's text as UTF-8


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    """The role comes in a choice's first chunk only; a field that is None is left out."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _without_none(self, handler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "shunter"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    error: ErrorDetail
