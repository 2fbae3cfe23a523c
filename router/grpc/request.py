"""Turn a `GenerateRequest` into token ids and `SamplingParams`, or a message naming the field.

Everything a client can get wrong is caught here, before a replica sees it, so a bad request
costs one INVALID_ARGUMENT and the server keeps serving. What depends on the model (token ids,
context length, KV blocks) is checked by the one validator `LLM` and the engines use too
(`shunter.replica.validation`), with field names as they sit in the gRPC request.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from shunter.errors import InvalidArgument
from shunter.proto import generation_pb2 as pb
from shunter.replica.chat import chat_prompt_ids
from shunter.replica.replica_core import ReplicaInfo
from shunter.replica.validation import validate_request
from shunter.sampling_params import SamplingParams

MAX_REQUEST_ID = 128
MAX_STOP = 16
MAX_STOP_CHARS = 256  # per stop string: each is searched for in the text of every chunk
MAX_STOP_TOKEN_IDS = 64
MAX_MESSAGES = 256
MAX_STRUCTURED_CHARS = 1 << 16  # a schema, regex, grammar or the choices together
MAX_REQUEST_BYTES = 1 << 20  # the server's gRPC max receive size: a larger request is RESOURCE_EXHAUSTED
PRIORITIES = {0: "interactive", 1: "interactive", 2: "batch"}


@dataclass
class Prepared:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    stop: list[str]


def _finite(name: str, value: float, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(f"{name}: must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise InvalidArgument(f"{name}: must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise InvalidArgument(f"{name}: must be <= {high}, got {value}")
    return float(value)


def request_id_of(req: pb.GenerateRequest) -> str:
    rid = req.request_id
    if not rid:
        return uuid.uuid4().hex
    if len(rid) > MAX_REQUEST_ID or not rid.isprintable():
        raise InvalidArgument(f"request_id: at most {MAX_REQUEST_ID} printable characters")
    return rid


def tokenize(req: pb.GenerateRequest, info: ReplicaInfo) -> list[int]:
    which = req.WhichOneof("input")
    tok = info.tokenizer
    if which is None:
        raise InvalidArgument("prompt: one of prompt, prompt_token_ids or messages is required")
    if which == "prompt_token_ids":
        return list(req.prompt_token_ids.ids)
    if tok is None:
        raise InvalidArgument(f"{which}: this model has no tokenizer; send prompt_token_ids")
    if which == "prompt":
        if not req.prompt:
            raise InvalidArgument("prompt: must not be empty")
        return list(tok(req.prompt).input_ids)
    if len(req.messages.messages) > MAX_MESSAGES:
        raise InvalidArgument(f"messages: at most {MAX_MESSAGES}, got {len(req.messages.messages)}")
    messages = [{"role": m.role, "content": m.content} for m in req.messages.messages]
    try:
        return chat_prompt_ids(tok, messages)
    except ValueError as e:
        raise InvalidArgument(str(e)) from e


def sampling_params(req: pb.GenerateRequest) -> SamplingParams:
    s = req.sampling
    max_tokens = s.max_tokens if s.HasField("max_tokens") else 16
    if max_tokens < 1:
        raise InvalidArgument(f"sampling.max_tokens: must be >= 1, got {max_tokens}")
    temperature = _finite("sampling.temperature", s.temperature, 0.0, 100.0) if s.HasField("temperature") else 1.0
    top_p = _finite("sampling.top_p", s.top_p, 0.0, 1.0, low_open=True) if s.HasField("top_p") else 1.0
    top_k = s.top_k if s.HasField("top_k") else -1
    if top_k < -1:
        raise InvalidArgument(f"sampling.top_k: must be -1 or 0 (off) or positive, got {top_k}")
    seed = s.seed if s.HasField("seed") else None
    if seed is not None and seed >= 2**63:
        raise InvalidArgument(f"sampling.seed: must be < 2**63, got {seed}")
    stop = list(s.stop)
    if len(stop) > MAX_STOP or any(not x for x in stop):
        raise InvalidArgument(f"sampling.stop: at most {MAX_STOP} non-empty strings")
    if any(len(x) > MAX_STOP_CHARS for x in stop):
        raise InvalidArgument(f"sampling.stop: each at most {MAX_STOP_CHARS} characters")
    if len(s.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidArgument(f"sampling.stop_token_ids: at most {MAX_STOP_TOKEN_IDS}, got {len(s.stop_token_ids)}")
    if req.priority not in PRIORITIES:
        raise InvalidArgument(f"priority: unknown value {req.priority}")
    logprobs = s.logprobs if s.HasField("logprobs") else None
    prompt_logprobs = s.prompt_logprobs if s.HasField("prompt_logprobs") else None
    structured = _structured_output(s.structured_output) if s.HasField("structured_output") else None
    ttft = _finite("slo.ttft_ms", req.slo.ttft_ms, 0.0, low_open=True) if req.slo.HasField("ttft_ms") else None
    tbt = _finite("slo.tbt_ms", req.slo.tbt_ms, 0.0, low_open=True) if req.slo.HasField("tbt_ms") else None
    try:
        return SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=max(top_k, -1) if top_k else -1,
            seed=seed, stop=stop, stop_token_ids=list(s.stop_token_ids), ignore_eos=s.ignore_eos,
            logprobs=logprobs, prompt_logprobs=prompt_logprobs, priority=PRIORITIES[req.priority], ttft_ms=ttft,
            tbt_ms=tbt, structured_output=structured)
    except ValueError as e:  # SamplingParams names the field; say where it sits in the request
        raise InvalidArgument(f"sampling.{e}") from e


def _structured_output(so: pb.StructuredOutput) -> dict:
    """The spec's one field as `SamplingParams` takes it (which checks that it compiles)."""
    which = so.WhichOneof("kind")
    if which is None:
        raise InvalidArgument("sampling.structured_output: set one of json, json_object, regex, choice, grammar")
    value = list(so.choice.choices) if which == "choice" else getattr(so, which)
    size = sum(map(len, value)) if which == "choice" else len(str(value))
    if size > MAX_STRUCTURED_CHARS:
        raise InvalidArgument(f"sampling.structured_output.{which}: at most {MAX_STRUCTURED_CHARS} characters")
    return {which: value}


def prepare(req: pb.GenerateRequest, info: ReplicaInfo) -> Prepared:
    rid = request_id_of(req)
    ids = tokenize(req, info)
    params = sampling_params(req)
    which = req.WhichOneof("input")
    try:
        validate_request(ids, params, info.limits, prompt_field=which, field_prefix="sampling.")
    except ValueError as e:
        raise InvalidArgument(str(e)) from e
    return Prepared(rid, ids, params, list(params.stop))
