"""A fake engine with the replica `Engine`'s contract and no model: for benchmarks, the simulator and tests.

`FakeEngine` honours the contract the replicas rely on (add_request, step, abort_request, stats,
drain_cache_events, export_request/import_request) with a deterministic 'model' (each token a
pure function of the tokens before it), so any routing, migration or failover must give the
same tokens as a plain run (`reference_output`). A step costs `step_time` seconds of sleep (0:
free), which makes it the zero-cost replica the router benchmarks need: everything measured
around it is the serving path, not the model. With `stamp=True` it records, per request, when
it was added and when its first token was made, so the engine's own TTFT is known exactly.
`ByteTokenizer` maps a token to a byte, so multi-byte characters span several tokens and
incremental detokenization is really exercised.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from shunter.outputs import RequestOutput
from shunter.replica.block_hash import block_hashes
from shunter.router.load import cdiv
from shunter.sampling_params import SamplingParams

EOS = 0
VOCAB = 1000


def next_token(tokens: list[int], vocab_size: int = VOCAB) -> int:
    """Deterministic 'model': never EOS unless the context ends in vocab_size-1."""
    if tokens[-1] == vocab_size - 1:
        return EOS
    return (sum((i + 1) * t for i, t in enumerate(tokens)) * 31 + len(tokens)) % (vocab_size - 2) + 1


def reference_output(prompt: list[int], max_tokens: int, ignore_eos: bool = False) -> list[int]:
    tokens, out = list(prompt), []
    while len(out) < max_tokens:
        t = next_token(tokens)
        tokens.append(t)
        out.append(t)
        if t == EOS and not ignore_eos:
            break
    return out


@dataclass
class FakeCacheEvent:
    kind: str
    block_hash: int


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
class FakeModelConfig:
    vocab_size: int = VOCAB
    eos_token_ids: list[int] = field(default_factory=lambda: [EOS])
    max_position_embeddings: int = 4096


@dataclass
class FakeStats:
    num_running: int
    num_waiting: int
    num_swapped: int
    kv_blocks_total: int
    kv_blocks_in_use: int
    kv_blocks_cached: int
    prefix_hit_rate: float
    num_preemptions: int
    blocks_expected_growth: int
    blocks_waiting: int


@dataclass
class FakeMigrationState:
    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    num_computed_tokens: int
    num_cached_tokens: int
    kv: list | None
    block_size: int = 16
    rng_state: Any = None


@dataclass
class _Req:
    prompt: list[int]
    params: SamplingParams
    output: list[int] = field(default_factory=list)
    cached_tokens: int = 0


class FakeEngine:
    """One token per running request per step; `step_time` seconds of sleep per step (the
    actor's loop runs on its own thread, so a sleep stands in for the model's forward)."""

    def __init__(self, config=None, step_time: float = 0.002, with_tokenizer: bool = False,
                 script: list[int] | None = None, stamp: bool = False) -> None:
        self.config = config
        self.script = script  # if set, the i-th output token of every request is script[i % len]
        self.block_size = getattr(config, "block_size", 16)
        self.step_time = getattr(config, "fake_step_time", step_time)
        self.model_config = FakeModelConfig()
        self.tokenizer = ByteTokenizer() if with_tokenizer or getattr(config, "model", "") == "fake:bytes" else None
        if self.tokenizer is not None:
            self.model_config.vocab_size = 259
        self.max_model_len = 4096
        self.kv_blocks_total = 4096
        self.requests: dict[str, _Req] = {}
        self.cached: set[int] = set()
        self.events: list[FakeCacheEvent] = []
        self.hits = self.lookups = 0
        # request id -> [added, first token made] (time.monotonic), when stamping
        self.stamps: dict[str, list[float]] | None = {} if stamp else None

    def add_request(self, request_id, prompt_token_ids, params, arrival_time=None) -> None:
        if not prompt_token_ids:
            raise ValueError("prompt must not be empty")
        bad = [t for t in prompt_token_ids if not 0 <= t < self.model_config.vocab_size]
        if bad:
            raise ValueError(f"prompt_token_ids: token id {bad[0]} is outside the vocabulary")
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        self.requests[request_id] = req = _Req(list(prompt_token_ids), params)
        hashes = block_hashes(req.prompt, self.block_size)
        hit = 0
        for h in hashes:
            if h not in self.cached:
                break
            hit += 1
        for h in hashes[hit:]:
            self.cached.add(h)
            self.events.append(FakeCacheEvent("stored", h))
        req.cached_tokens = hit * self.block_size
        self.hits, self.lookups = self.hits + req.cached_tokens, self.lookups + len(req.prompt)
        if self.stamps is not None:
            self.stamps[request_id] = [time.monotonic()]

    def abort_request(self, request_id: str) -> None:
        self.requests.pop(request_id, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[RequestOutput]:
        if self.step_time:
            time.sleep(self.step_time)
        outs = []
        for rid, req in list(self.requests.items()):
            if self.script:
                token = self.script[len(req.output) % len(self.script)]
            else:
                token = next_token(req.prompt + req.output, self.model_config.vocab_size)
            req.output.append(token)
            reason = None
            if (token == EOS and not req.params.ignore_eos) or token in req.params.stop_token_ids:
                reason = "stop"
            elif len(req.output) >= req.params.max_tokens:
                reason = "length"
            if reason:
                del self.requests[rid]
            outs.append(RequestOutput(rid, req.prompt, list(req.output), [token], reason, num_cached_tokens=req.cached_tokens))
            if self.stamps is not None and len(req.output) == 1 and rid in self.stamps:
                self.stamps[rid].append(time.monotonic())
        return outs

    def stats(self) -> FakeStats:
        held = sum(cdiv(len(r.prompt) + len(r.output), self.block_size) for r in self.requests.values())
        growth = sum(cdiv(r.params.max_tokens - len(r.output), self.block_size) for r in self.requests.values())
        return FakeStats(len(self.requests), 0, 0, self.kv_blocks_total, held, len(self.cached),
                         self.hits / self.lookups if self.lookups else 0.0, 0, growth, 0)

    def drain_cache_events(self) -> list[FakeCacheEvent]:
        events, self.events = self.events, []
        return events

    def export_request(self, request_id: str) -> FakeMigrationState | None:
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        n = len(req.prompt) + len(req.output) - 1
        return FakeMigrationState(request_id, req.prompt, list(req.output), req.params, 0.0, n, req.cached_tokens,
                                  kv=[("kv", n)], block_size=self.block_size)

    def import_request(self, state: FakeMigrationState) -> int:
        """Returns the tokens resumed with KV (0: recomputed; the fake's tokens are the same either way)."""
        if state.request_id in self.requests:
            raise ValueError(f"request_id {state.request_id!r} is already in use")
        self.requests[state.request_id] = _Req(list(state.prompt_token_ids), state.params,
                                               list(state.output_token_ids), state.num_cached_tokens)
        return state.num_computed_tokens if state.kv is not None else 0


def make_fake_engine(config) -> FakeEngine:
    """Engine factory for replica actors (`--engine-factory shunter.router.fake_engine:make_fake_engine`)."""
    return FakeEngine(config)


def make_zero_cost_engine(config=None) -> FakeEngine:
    """A free engine (no sleep per step) that stamps its own TTFT: what hop benchmarks run."""
    return FakeEngine(config, step_time=0.0, stamp=True)
