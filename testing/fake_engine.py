"""A fake engine with the replica `Engine`'s contract and no model: for benchmarks and tests.

`FakeEngine` implements `EngineProtocol` with the same types as the real engine and a
deterministic 'model' (each token a pure function of the tokens before it), so any routing,
migration or failover must give the same tokens as a plain run (`reference_output`). A step
costs `step_time` seconds of sleep (0: free), which makes it the zero-cost replica the router
benchmarks need: everything measured around it is the serving path, not the model. With
`stamp=True` it records, per request, when it was added and when its first token was made, so
the engine's own TTFT is known exactly. `ByteTokenizer` maps a token to a byte, so multi-byte
characters span several tokens and incremental detokenization is really exercised. Its
log-probabilities are a pure function of the context too (`fake_logprobs`: half the mass on the
token `next_token` picks), so a moved, failed-over or resumed stream must carry the same ones.

Users reach it as a model name: `shunter serve --model fake:ids` (token ids only) or
`fake:bytes` (byte tokenizer), with an optional step time in milliseconds (`fake:bytes:10`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from shunter.logprobs import TokenLogprobs
from shunter.mathutil import cdiv
from shunter.replica.block_hash import block_hashes
from shunter.replica.detokenizer import IncrementalDetokenizer
from shunter.replica.engine_config import EngineConfig
from shunter.replica.engine_protocol import (
    MIGRATION_WATCHDOG_S,
    CacheEvent,
    EngineOutput,
    EngineStats,
    KVStage,
    MigrationState,
    ModelLimits,
)
from shunter.replica.validation import validate_request
from shunter.sampling_params import SamplingParams

FAKE_MODEL_PREFIX = "fake:"
FACTORY = "shunter.testing.fake_engine:FakeEngine"  # what replica actors import for a `fake:` model
EOS = 0
VOCAB = 1000


def next_token(tokens: list[int], vocab_size: int = VOCAB) -> int:
    """Deterministic 'model': never EOS unless the context ends in vocab_size-1."""
    if tokens[-1] == vocab_size - 1:
        return EOS
    return (sum((i + 1) * t for i, t in enumerate(tokens)) * 31 + len(tokens)) % (vocab_size - 2) + 1


def fake_logprobs(context: list[int], token: int, k: int, vocab_size: int = VOCAB) -> TokenLogprobs:
    """The fake model's log-probabilities of `token` after `context`: half the mass on
    `next_token(context)`, the rest spread evenly; the top k are it, then the smallest other ids."""
    top = next_token(context, vocab_size)
    high, low = math.log(0.5), math.log(0.5 / (vocab_size - 1))
    others = [t for t in range(k) if t != top][: max(k - 1, 0)]
    top_ids = ((top, *others) if k else ())
    return TokenLogprobs(token, high if token == top else low, 1 if token == top else 2, top_ids,
                         tuple(high if t == top else low for t in top_ids))


def fake_prompt_logprobs(prompt: list[int], k: int, vocab_size: int = VOCAB) -> list[TokenLogprobs | None]:
    """The prompt's, as the engine gives them: None for the first token, which nothing predicts."""
    return [None] + [fake_logprobs(prompt[:q], prompt[q], k, vocab_size) for q in range(1, len(prompt))]


def reference_output(prompt: list[int], max_tokens: int, ignore_eos: bool = False) -> list[int]:
    tokens, out = list(prompt), []
    while len(out) < max_tokens:
        t = next_token(tokens)
        tokens.append(t)
        out.append(t)
        if t == EOS and not ignore_eos:
            break
    return out


class ByteTokenizer:
    """Token id = byte value (+3); 0..2 are special. Multi-byte UTF-8 characters span tokens."""

    eos_token_id = EOS
    chat_template = "bytes"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1] if add_special_tokens else []) + [b + 3 for b in text.encode("utf-8")]

    def __call__(self, text: str, add_special_tokens: bool = True):
        return type("Enc", (), {"input_ids": self.encode(text, add_special_tokens)})()

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(t - 3 for t in ids if 3 <= t < 259).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = True):
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + ("<assistant>" if add_generation_prompt else "")
        return self.encode(text) if tokenize else text


@dataclass
class _Req:
    prompt: list[int]
    params: SamplingParams
    arrival_time: float
    output: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    first_token_time: float | None = None
    detok: IncrementalDetokenizer | None = None


def parse_fake_model(model: str) -> tuple[bool, float]:
    """`fake:ids|bytes[:STEP_MS]` -> (with a byte tokenizer, step time in seconds)."""
    parts = model[len(FAKE_MODEL_PREFIX):].split(":")
    if not model.startswith(FAKE_MODEL_PREFIX) or parts[0] not in ("ids", "bytes") or len(parts) > 2:
        raise ValueError(f"model: a fake model is fake:ids or fake:bytes, optionally :STEP_MS; got {model!r}")
    try:
        step_ms = float(parts[1]) if len(parts) == 2 else 2.0
    except ValueError:
        raise ValueError(f"model: the step time in {model!r} must be a number of milliseconds") from None
    if step_ms < 0:
        raise ValueError(f"model: the step time in {model!r} must be >= 0")
    return parts[0] == "bytes", step_ms / 1e3


class FakeEngine:
    """One token per running request per step; `step_time` seconds of sleep per step (the
    actor's loop runs on its own thread, so a sleep stands in for the model's forward)."""

    def __init__(self, config: EngineConfig | None = None, step_time: float = 0.002, with_tokenizer: bool = False,
                 script: list[int] | None = None, stamp: bool = False) -> None:
        if config is not None and config.model.startswith(FAKE_MODEL_PREFIX):
            with_tokenizer, step_time = parse_fake_model(config.model)
        self.script = script  # if set, the i-th output token of every request is script[i % len]
        self.block_size = config.block_size if config is not None else 16
        self.step_time = step_time
        self.tokenizer = ByteTokenizer() if with_tokenizer else None
        vocab = 259 if with_tokenizer else VOCAB
        self.limits = ModelLimits(vocab, 4096, self.block_size, 4096, (EOS,))
        self.requests: dict[str, _Req] = {}
        self.cached: set[int] = set()
        self.events: list[CacheEvent] = []
        self.hits = self.lookups = 0
        self.reserved: dict[str, list[float]] = {}  # live migration: request id -> [blocks held, blocks filled, touched at]
        # request id -> [added, first token made] (time.monotonic), when stamping
        self.stamps: dict[str, list[float]] | None = {} if stamp else None

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    arrival_time: float | None = None) -> None:
        validate_request(prompt_token_ids, params, self.limits)
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        now = time.monotonic()
        self.requests[request_id] = req = _Req(list(prompt_token_ids), params, now if arrival_time is None else arrival_time)
        req.detok = self._detokenizer(params)
        hashes = block_hashes(req.prompt, self.block_size)
        hit = 0
        for h in hashes:
            if h not in self.cached:
                break
            hit += 1
        for h in hashes[hit:]:
            self.cached.add(h)
            self.events.append(CacheEvent("stored", h))
        req.cached_tokens = hit * self.block_size
        self.hits, self.lookups = self.hits + req.cached_tokens, self.lookups + len(req.prompt)
        if self.stamps is not None:
            self.stamps[request_id] = [now]

    def _detokenizer(self, params: SamplingParams) -> IncrementalDetokenizer | None:
        return IncrementalDetokenizer(self.tokenizer, params.stop) if self.tokenizer is not None else None

    def abort_request(self, request_id: str) -> EngineOutput | None:
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        return EngineOutput(request_id, [], len(req.output), "abort", "", req.cached_tokens, req.arrival_time)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[EngineOutput]:
        if self.step_time:
            time.sleep(self.step_time)
        outs = []
        now = time.monotonic()
        for rid, req in list(self.requests.items()):
            if self.script:
                token = self.script[len(req.output) % len(self.script)]
            else:
                token = next_token(req.prompt + req.output, self.limits.vocab_size)
            req.output.append(token)
            if req.first_token_time is None:
                req.first_token_time = now
                if self.stamps is not None and rid in self.stamps:
                    self.stamps[rid].append(now)
            text = req.detok.add(token) if req.detok is not None else ""
            reason = None
            if (token == EOS and not req.params.ignore_eos) or token in req.params.stop_token_ids:
                reason = "stop"
            elif req.detok is not None and req.detok.stopped:
                reason = "stop"
            elif len(req.output) >= req.params.max_tokens:
                reason = "length"
            if reason:
                del self.requests[rid]
                text += req.detok.flush() if req.detok is not None else ""
            out = EngineOutput(rid, [token], len(req.output), reason, text, req.cached_tokens,  # type: ignore[arg-type]
                               req.arrival_time, req.first_token_time)
            if req.params.logprobs is not None or req.params.prompt_logprobs is not None:
                self._with_logprobs(out, req)
            outs.append(out)
        return outs

    def _with_logprobs(self, out: EngineOutput, req: _Req) -> None:
        p, vocab = req.params, self.limits.vocab_size
        if p.logprobs is not None:
            out.new_logprobs = [fake_logprobs(req.prompt + req.output[:-1], req.output[-1], p.logprobs, vocab)]
        if p.prompt_logprobs is not None and len(req.output) == 1:
            out.prompt_logprobs = fake_prompt_logprobs(req.prompt, p.prompt_logprobs, vocab)

    def stats(self) -> EngineStats:
        held = sum(cdiv(len(r.prompt) + len(r.output), self.block_size) for r in self.requests.values())
        held += sum(int(r[0]) for r in self.reserved.values())
        growth = sum(cdiv(r.params.max_tokens - len(r.output), self.block_size) for r in self.requests.values())
        return EngineStats(
            num_running=len(self.requests), num_waiting=0, num_swapped=0, kv_blocks_total=self.limits.num_kv_blocks,
            kv_blocks_in_use=held, kv_blocks_cached=len(self.cached),
            prefix_hit_rate=self.hits / self.lookups if self.lookups else 0.0, prefix_queries=self.lookups,
            prefix_hits=self.hits, num_preemptions=0, num_swaps=0,
            num_recomputed_tokens=0, blocks_expected_growth=growth, blocks_waiting=0, num_steps=0, mean_step_time=self.step_time)

    def drain_cache_events(self) -> list[CacheEvent]:
        events, self.events = self.events, []
        return events

    def export_request(self, request_id: str, from_block: int = 0, epoch: int | None = None) -> MigrationState | None:
        """Its 'KV' is nothing: the fake's tokens depend only on the tokens, so a move resumes exactly."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        n = len(req.prompt) + len(req.output) - 1
        k, vocab = req.params.logprobs, self.limits.vocab_size
        logprobs = None if k is None else [fake_logprobs(req.prompt + req.output[:j], t, k, vocab)
                                           for j, t in enumerate(req.output)]
        pk = req.params.prompt_logprobs
        prompt_logprobs = None if pk is None else fake_prompt_logprobs(req.prompt, pk, vocab)
        return MigrationState(request_id, req.prompt, list(req.output), req.params, req.arrival_time, n,
                              req.cached_tokens, kv=[], block_size=self.block_size, kv_first_block=from_block,
                              output_logprobs=logprobs, prompt_logprobs=prompt_logprobs)

    def export_blocks(self, request_id: str, first_block: int, min_blocks: int = 1) -> KVStage | None:
        req = self.requests.get(request_id)
        if req is None:
            return None
        computed = len(req.prompt) + len(req.output) - 1
        full = max(computed // self.block_size, first_block)
        if full - first_block < min_blocks:
            full = first_block
        return KVStage(request_id, first_block, full - first_block, [] if full > first_block else None,
                       cdiv(computed, self.block_size), 0, self.block_size)

    def prefilled(self, request_id: str) -> bool:
        req = self.requests.get(request_id)
        return req is not None and bool(req.output)

    def reserve_migration(self, request_id: str, num_blocks: int) -> bool:
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        held = self.reserved.setdefault(request_id, [0, 0, 0.0])
        held[0], held[2] = max(held[0], num_blocks), time.monotonic()
        return True

    def import_blocks(self, stage: KVStage) -> bool:
        held = self.reserved.get(stage.request_id)
        if held is None or stage.block_size != self.block_size or stage.first_block > held[1]:
            return False
        held[0], held[1], held[2] = max(held[0], stage.end_block), max(held[1], stage.end_block), time.monotonic()
        return True

    def cancel_migration(self, request_id: str) -> int:
        held = self.reserved.pop(request_id, None)
        return int(held[0]) if held is not None else 0

    def expire_migrations(self) -> list[str]:
        expired = [rid for rid, held in self.reserved.items() if time.monotonic() - held[2] > MIGRATION_WATCHDOG_S]
        for rid in expired:
            del self.reserved[rid]
        return expired

    def import_request(self, state: MigrationState) -> int:
        if state.request_id in self.requests:
            raise ValueError(f"request_id {state.request_id!r} is already in use")
        req = _Req(list(state.prompt_token_ids), state.params, state.arrival_time, list(state.output_token_ids),
                   state.num_cached_tokens, detok=self._detokenizer(state.params))
        if req.detok is not None:  # the source released this text already
            for token in req.output:
                req.detok.add(token)
            req.detok.released = len(req.detok.text)
        self.requests[state.request_id] = req
        held = self.reserved.pop(state.request_id, None)
        if state.kv_first_block > (held[1] if held is not None else 0):
            return 0  # the blocks before the first it carries never came: as a recompute
        return state.num_computed_tokens if state.kv is not None else 0


def make_zero_cost_engine(config: EngineConfig | None = None) -> FakeEngine:
    """A free engine (no sleep per step) that stamps its own TTFT: what hop benchmarks run."""
    return FakeEngine(config, step_time=0.0, stamp=True)
