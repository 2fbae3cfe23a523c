"""Seeded request streams: what the simulator (`shunter bench sim`) and the load client
(`shunter bench serve`) both send, so a simulated run and a real one can replay the same trace.

A workload is a list of `WorkloadRequest`s: when each arrives, how long its prompt and output
are, its priority class and latency targets, and its prefix structure (which tenant sent it and
how much of its prompt it shares with others). Prompts are not stored: `prompt_tokens()` makes
them on demand from seeds (a shared prefix is the same tokens for every request of its group),
so 100,000 requests cost a few megabytes until they are sent. A request may be one turn of a
conversation: its prompt then holds the earlier turns' prompts and the answers actually
received, so it can only be made, and sent, once the turn before it has finished.

Lengths are output token counts the client asks for with `ignore_eos`, so every engine and the
simulator produce exactly that many tokens. Where a generator follows published statistics, the
constant says where it comes from; where we had to choose (a distribution's shape, a bound), the
docstring says so.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from shunter.sampling_params import SamplingParams

# Token ids prompts draw from: clear of the low ids where tokenizers keep special tokens, and
# of the top of the vocabulary (the fake model's EOS trigger is its last id).
FIRST_TOKEN_ID = 10

# ShareGPT (Kwon et al., "Efficient Memory Management for Large Language Model Serving with
# PagedAttention", SOSP 2023, §6.1 / Fig. 11): mean input 161.31 and mean output 337.99 tokens.
# The shape is ours: log-normal with the sigmas below, clipped to 4..1,024 tokens (the vLLM
# serving benchmark drops longer ShareGPT conversations), located so the clipped mean is the
# published one.
SHAREGPT_MEAN_INPUT = 161.31
SHAREGPT_MEAN_OUTPUT = 337.99
SHAREGPT_SIGMA_INPUT = 1.0
SHAREGPT_SIGMA_OUTPUT = 0.9
SHAREGPT_BOUNDS = (4, 1024)

# SGLang's `generated-shared-prefix` benchmark (python -m sglang.bench_serving
# --dataset-name generated-shared-prefix): 64 groups x 16 prompts, a 2,048-token system prompt
# per group, a 128-token question per request, 256 output tokens (its defaults).
GSP_NUM_GROUPS = 64
GSP_SYSTEM_PROMPT_LEN = 2048
GSP_QUESTION_LEN = 128
GSP_OUTPUT_LEN = 256


@dataclass(frozen=True, slots=True)
class WorkloadRequest:
    """One request of a workload. The first `prefix_len` prompt tokens are the shared prefix of
    group `prefix_id` (None: nothing shared); then, for a later turn of a conversation, about
    `history_len` tokens of the earlier turns (their questions and the answers received); the
    rest are the request's own, seeded by `seed`. A trace may give the prompt itself
    (`prompt_token_ids`) instead."""

    request_id: str
    arrival_s: float  # offset from the start of the run
    prompt_len: int
    output_len: int  # max_tokens, made in full (ignore_eos)
    priority: str = "interactive"
    ttft_ms: float | None = None
    tbt_ms: float | None = None
    tenant: str = ""
    prefix_id: int | None = None
    prefix_len: int = 0
    seed: int = 0
    conversation: str = ""  # turns of one conversation are sent one after another, in `turn` order
    turn: int = 0
    history_len: int = 0  # planned; the real history is what the earlier turns received
    think_s: float = 0.0  # a later turn is sent this long after the previous one's last token, at the earliest
    prompt_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.prompt_len < 1 or self.output_len < 1:
            raise ValueError(f"{self.request_id}: prompt_len and output_len must be >= 1")
        if not 0 <= self.prefix_len <= self.prompt_len:
            raise ValueError(f"{self.request_id}: prefix_len must be in [0, prompt_len]")
        if self.history_len < 0 or self.prefix_len + self.history_len > self.prompt_len:
            raise ValueError(f"{self.request_id}: prefix_len + history_len must be in [0, prompt_len]")
        if self.history_len and not self.conversation:
            raise ValueError(f"{self.request_id}: history_len needs a conversation")
        if self.prompt_token_ids is not None and (len(self.prompt_token_ids) != self.prompt_len or self.prefix_len
                                                  or self.history_len):
            raise ValueError(f"{self.request_id}: prompt_token_ids must be the whole prompt (prompt_len tokens, "
                             "no prefix_len or history_len)")

    def prompt_tokens(self, vocab_size: int, history: list[int] | None = None) -> list[int]:
        """The prompt's token ids: the group's prefix, the conversation so far, the request's own
        tokens. A later turn needs `history` (what follows the prefix in the previous turn's
        prompt, then the answer received to it): it is not known in advance."""
        if self.prompt_token_ids is not None:
            return list(self.prompt_token_ids)
        if self.history_len and history is None:
            raise ValueError(f"{self.request_id}: turn {self.turn} of {self.conversation} needs the earlier turns "
                             "(history)")
        own = _tokens((0, self.seed), self.prompt_len - self.prefix_len - self.history_len, vocab_size)
        shared = list(_prefix(self.prefix_id, self.prefix_len, vocab_size)) if self.prefix_id is not None else []
        return shared + list(history or []) + own

    def sampling_params(self, **overrides) -> SamplingParams:
        """Greedy, exactly `output_len` tokens, with the request's class and targets."""
        settings = dict(max_tokens=self.output_len, temperature=0.0, ignore_eos=True, priority=self.priority,
                        ttft_ms=self.ttft_ms, tbt_ms=self.tbt_ms)
        return SamplingParams(**(settings | overrides))


def _tokens(seed: tuple[int, int], n: int, vocab_size: int) -> list[int]:
    """`n` token ids in [FIRST_TOKEN_ID, vocab_size - FIRST_TOKEN_ID), from numpy (a 2,048-token
    system prompt in ~50 us: the prompts of 100,000 requests over thousands of groups are made
    as they are sent)."""
    top = vocab_size - FIRST_TOKEN_ID
    if top <= FIRST_TOKEN_ID:
        raise ValueError(f"vocab_size {vocab_size} is too small for workload prompts")
    return np.random.default_rng(seed).integers(FIRST_TOKEN_ID, top, n).tolist()


@lru_cache(maxsize=8192)  # every group of the scale experiment (8 per replica, 1,000 replicas): one draw each
def _prefix(prefix_id: int, n: int, vocab_size: int) -> tuple[int, ...]:
    """A group's system prompt, made once (a miss costs ~40 us, a hit ~2). Its ids are the
    shared int objects of `_ints`: 8,000 prompts of 2,048 tokens hold 130 MB, not 650."""
    ids = _tokens((1, prefix_id), n, vocab_size)  # (1, id): never a request's own (0, seed)
    return tuple(map(_ints(vocab_size).__getitem__, ids))


@lru_cache(maxsize=4)
def _ints(vocab_size: int) -> list[int]:
    return list(range(vocab_size))


# ---- arrivals -----------------------------------------------------------------------------
def arrivals(n: int, rate: float, rng: random.Random, cv: float = 1.0) -> list[float]:
    """`n` arrival offsets at `rate` per second: Poisson (cv=1) or, for burstier (cv>1) or
    smoother (cv<1) traffic, gamma inter-arrival times with that coefficient of variation.
    rate=inf: everything at 0 (an offline batch)."""
    if rate <= 0 or cv <= 0:
        raise ValueError("rate and cv must be > 0")
    if math.isinf(rate):
        return [0.0] * n
    shape = 1.0 / (cv * cv)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.gammavariate(shape, 1.0 / (rate * shape))
        out.append(t)
    return out


def _lognormal(rng: random.Random, mean: float, sigma: float, bounds: tuple[int, int]) -> int:
    """A log-normal draw clipped to `bounds`, whose clipped mean is `mean`."""
    return min(max(round(rng.lognormvariate(_clipped_mu(mean, sigma, bounds), sigma)), bounds[0]), bounds[1])


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _clipped_mean(mu: float, sigma: float, lo: float, hi: float) -> float:
    """E[min(max(X, lo), hi)] for X log-normal(mu, sigma)."""
    a, b = (math.log(lo) - mu) / sigma, (math.log(hi) - mu) / sigma
    inside = math.exp(mu + sigma * sigma / 2) * (_phi(b - sigma) - _phi(a - sigma))
    return inside + lo * _phi(a) + hi * (1.0 - _phi(b))


@lru_cache(maxsize=64)
def _clipped_mu(mean: float, sigma: float, bounds: tuple[int, int]) -> float:
    lo, hi = bounds
    if not lo < mean < hi:
        raise ValueError(f"mean {mean} must lie inside {bounds}")
    left, right = math.log(lo) - 10 * sigma, math.log(hi) + 10 * sigma  # the clipped mean grows with mu
    for _ in range(100):
        mid = (left + right) / 2
        left, right = (mid, right) if _clipped_mean(mid, sigma, lo, hi) < mean else (left, mid)
    return (left + right) / 2


# ---- generators ---------------------------------------------------------------------------
def sharegpt(num_requests: int, rate: float, seed: int = 0, cv: float = 1.0, ttft_ms: float | None = None,
             tbt_ms: float | None = None) -> list[WorkloadRequest]:
    """Chat traffic with ShareGPT's mean lengths (see SHAREGPT_*); no shared prefixes."""
    rng = random.Random(seed)
    times = arrivals(num_requests, rate, rng, cv)
    return [
        WorkloadRequest(f"sharegpt-{i}", t, _lognormal(rng, SHAREGPT_MEAN_INPUT, SHAREGPT_SIGMA_INPUT, SHAREGPT_BOUNDS),
                        _lognormal(rng, SHAREGPT_MEAN_OUTPUT, SHAREGPT_SIGMA_OUTPUT, SHAREGPT_BOUNDS),
                        ttft_ms=ttft_ms, tbt_ms=tbt_ms, seed=rng.getrandbits(62))
        for i, t in enumerate(times)
    ]


def shared_prefix(num_requests: int, rate: float, seed: int = 0, cv: float = 1.0, num_groups: int = GSP_NUM_GROUPS,
                  system_prompt_len: int = GSP_SYSTEM_PROMPT_LEN, question_len: int = GSP_QUESTION_LEN,
                  output_len: int = GSP_OUTPUT_LEN, hot_fraction: float = 0.0, turns: int = 1,
                  think_s: float = 0.0) -> list[WorkloadRequest]:
    """SGLang's generated-shared-prefix shape: each request is one group's system prompt plus a
    question of its own; groups are tenants. Requests pick a group uniformly, except that a
    `hot_fraction` of all traffic comes from group 0 (tenant "t0"): one hot prefix.

    With `turns` > 1 each group draw starts a conversation of that many turns (the last one may
    be cut short at `num_requests`): turn k's prompt is turn k-1's prompt, the answer to it and
    a new question, sent `think_s` after that answer ended. Conversations start at `rate /
    turns`, so requests come at about `rate` once conversations overlap."""
    if num_groups < 1 or not 0.0 <= hot_fraction <= 1.0 or turns < 1 or think_s < 0:
        raise ValueError("need num_groups >= 1, hot_fraction in [0, 1], turns >= 1 and think_s >= 0")
    rng = random.Random(seed)
    times = arrivals(math.ceil(num_requests / turns), rate / turns, rng, cv)
    out = []
    for c, t in enumerate(times):
        group = 0 if rng.random() < hot_fraction else rng.randrange(num_groups)
        for k in range(min(turns, num_requests - c * turns)):
            history = k * (question_len + output_len)
            rid, conversation = (f"gsp-{c}", "") if turns == 1 else (f"gsp-{c}-{k}", f"c{c}")
            out.append(WorkloadRequest(rid, t + k * think_s, system_prompt_len + history + question_len, output_len,
                                       tenant=f"t{group}", prefix_id=group, prefix_len=system_prompt_len,
                                       seed=rng.getrandbits(62), conversation=conversation, turn=k,
                                       history_len=history, think_s=think_s if k else 0.0))
    return sorted(out, key=lambda r: r.arrival_s)


def long_mix(num_requests: int, rate: float, seed: int = 0, cv: float = 1.0, long_fraction: float = 0.1,
             long_prompt: tuple[int, int] = (4096, 8192), long_output: tuple[int, int] = (64, 256),
             tbt_ms: float | None = None) -> list[WorkloadRequest]:
    """ShareGPT-like chat with a `long_fraction` of long-prompt requests (documents to
    summarize): the long prefills are what stall decodes when they are not chunked."""
    rng = random.Random(seed)
    chat = sharegpt(num_requests, rate, seed, cv, tbt_ms=tbt_ms)
    out = []
    for i, r in enumerate(chat):
        if rng.random() < long_fraction:
            r = WorkloadRequest(f"long-{i}", r.arrival_s, rng.randint(*long_prompt), rng.randint(*long_output),
                                tbt_ms=tbt_ms, seed=r.seed)
        out.append(r)
    return out


def priority_mix(num_requests: int, rate: float, seed: int = 0, cv: float = 1.0, long_fraction: float = 0.25,
                 short_prompt: tuple[int, int] = (8, 32), long_prompt: tuple[int, int] = (160, 256),
                 short_output: tuple[int, int] = (8, 16), long_output: tuple[int, int] = (24, 40),
                 ) -> list[WorkloadRequest]:
    """Short `interactive` requests and long `batch` ones (the defaults are `shunter bench
    policies`' stream): what priority and SLO-aware policies are for."""
    rng = random.Random(seed)
    times = arrivals(num_requests, rate, rng, cv)
    out = []
    for i, t in enumerate(times):
        long = rng.random() < long_fraction
        prompt, output = (long_prompt, long_output) if long else (short_prompt, short_output)
        out.append(WorkloadRequest(f"{'long' if long else 'short'}-{i}", t, rng.randint(*prompt),
                                   rng.randint(*output), priority="batch" if long else "interactive",
                                   seed=rng.getrandbits(62)))
    return out


def skewed_output(num_requests: int, rate: float, seed: int = 0, cv: float = 1.0, long_fraction: float = 0.1,
                  prompt: tuple[int, int] = (64, 512), short_output: tuple[int, int] = (16, 128),
                  long_output: tuple[int, int] = (1024, 2048)) -> list[WorkloadRequest]:
    """Mostly short answers and a `long_fraction` of very long ones, unknown at arrival: the
    replicas that drew the long ones fill up while routing could not know (what load-pair
    rebalancing with migration is for; Llumnix evaluates on such skewed length mixes)."""
    rng = random.Random(seed)
    times = arrivals(num_requests, rate, rng, cv)
    return [
        WorkloadRequest(f"skew-{i}", t, rng.randint(*prompt),
                        rng.randint(*(long_output if rng.random() < long_fraction else short_output)),
                        seed=rng.getrandbits(62))
        for i, t in enumerate(times)
    ]


# ---- traces -------------------------------------------------------------------------------
def write_trace(path: Path, requests: Iterable[WorkloadRequest]) -> None:
    """One JSON object per line, the fields of `WorkloadRequest`."""
    with Path(path).open("w") as f:
        for r in requests:
            f.write(json.dumps(asdict(r)) + "\n")


def trace(path: str | Path, num_requests: int | None = None, rate: float | None = None, seed: int = 0) -> list[WorkloadRequest]:
    """Replay a JSONL trace (`write_trace`'s format; `request_id`, `arrival_s`, `output_len` and
    `prompt_len` or `prompt_token_ids` are required). `rate` rescales arrival times to that mean
    rate."""
    names = {f.name for f in fields(WorkloadRequest)}
    out = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        unknown = set(row) - names
        if unknown:
            raise ValueError(f"{path}:{line_no}: unknown fields {sorted(unknown)}")
        if row.get("prompt_token_ids") is not None:
            row["prompt_token_ids"] = tuple(row["prompt_token_ids"])
            row.setdefault("prompt_len", len(row["prompt_token_ids"]))
        out.append(WorkloadRequest(**row))
        if num_requests is not None and len(out) == num_requests:
            break
    out.sort(key=lambda r: r.arrival_s)
    if rate is not None and len(out) > 1 and out[-1].arrival_s > out[0].arrival_s:
        scale = (len(out) - 1) / rate / (out[-1].arrival_s - out[0].arrival_s)
        out = [_replace_arrival(r, (r.arrival_s - out[0].arrival_s) * scale) for r in out]
    return out


def _replace_arrival(r: WorkloadRequest, arrival_s: float) -> WorkloadRequest:
    return WorkloadRequest(**(asdict(r) | {"arrival_s": arrival_s}))


WORKLOADS: dict[str, Callable[..., list[WorkloadRequest]]] = {
    "sharegpt": sharegpt,
    "shared-prefix": shared_prefix,
    "long-mix": long_mix,
    "priority-mix": priority_mix,
    "skewed-output": skewed_output,
    "trace": trace,
}


def make_workload(name: str, num_requests: int, rate: float, seed: int = 0, **options) -> list[WorkloadRequest]:
    """The named workload (`trace` takes `path=`); options are the generator's keyword arguments."""
    if name not in WORKLOADS:
        raise ValueError(f"workload must be one of {sorted(WORKLOADS)}, got {name!r}")
    return WORKLOADS[name](num_requests=num_requests, rate=rate, seed=seed, **options)
