"""Turn logits into tokens on the device, all rows at once: greedy, temperature, top-k, top-p;
and, for the rows that ask, log-probabilities of the raw distribution.

Nothing here reads a value back to the host, so a step syncs once, when its tokens are copied
back. Randomness is counter-based: a request's k-th drawn token uses a uniform number that is a
pure function of (its seed, k) (splitmix64), so its tokens do not depend on what else shares
the batch, survive preemption (a recompute draws the same k again) and migrate with the seed
alone. The token is the inverse CDF of the filtered distribution at that number.

A grammar's token mask (structured output: a bitmask from `grammar.py`) sets the disallowed
tokens' logits to -inf before the token is chosen, greedy or drawn.

Log-probabilities are taken from the logits as the model gave them, before temperature, the
filters and a grammar's mask (which act on what is sampled, not on what is reported): vLLM v1's default, so a greedy request sees the numbers a sampled one
does. They are computed only when a row of the step asks (`SamplingInputs.num_logprobs`, known
on the host), as a log-sum-exp, a top-k and a count per row: no `[N, vocab]` tensor is written.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shunter.replica.step_inputs import SamplingInputs

_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # splitmix64's constants as signed int64
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


@dataclass
class RequestRng:
    """A random request's stream: its seed; the draw counter is the index of the output token
    drawn, so there is no other state. Keeps torch.Generator's get/set_state for migration."""

    seed: int  # in [0, 2**63): any int seed is taken modulo that

    def __post_init__(self) -> None:
        self.seed %= 1 << 63

    def get_state(self) -> torch.Tensor:
        return torch.tensor([self.seed], dtype=torch.int64)

    def set_state(self, state: torch.Tensor) -> None:
        self.seed = int(state[0])


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical shift of int64 (torch's >> is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def uniform(seeds: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """float64 in [0, 1): draw `draws[i]` of the stream seeded `seeds[i]` (int64 arithmetic wraps)."""
    z = seeds + (draws + 1) * _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    z = z ^ _shift_right(z, 31)
    return _shift_right(z, 11).double() * 2.0**-53


def _draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index of the first cumulative probability above `u` times the row's total mass: never a
    zero-probability entry (its cumulative value equals the one before it)."""
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    target = torch.minimum((u[:, None] * total.double()).float(), torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


@dataclass
class LogprobsTensors:
    """Per row: the log-probability of one token and its rank, and the `k` most likely tokens."""

    logprobs: torch.Tensor  # float32 [R]
    ranks: torch.Tensor  # int64 [R]: 1 + the number of tokens more likely
    top_ids: torch.Tensor  # int64 [R, k], most likely first
    top_logprobs: torch.Tensor  # float32 [R, k]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.logprobs, self.ranks, self.top_ids, self.top_logprobs


def logprobs_of(logits: torch.Tensor, token_ids: torch.Tensor, k: int) -> LogprobsTensors:
    """Log-probabilities under `logits` `[R, vocab]` (raw) of `token_ids` `[R]`, and the top `k`."""
    logits = logits.float()
    norm = logits.logsumexp(-1, keepdim=True)
    chosen = logits.gather(1, token_ids[:, None])
    ranks = (logits > chosen).sum(-1) + 1
    top, top_ids = logits.topk(k, dim=-1)
    return LogprobsTensors((chosen - norm).squeeze(1), ranks, top_ids, top - norm)


@dataclass
class SamplerOutput:
    tokens: torch.Tensor  # int64 [N]
    logprobs: LogprobsTensors | None  # of every row, when a row asked (`num_logprobs` >= 0)


_BYTE_BIAS: dict[torch.device, torch.Tensor] = {}


def mask_bias(bitmask: torch.Tensor, vocab: int, device: torch.device) -> torch.Tensor:
    """float32 `[N, vocab]`, 0 where an int32 bitmask `[N, ceil(vocab / 32)]` allows the token
    (bit j of word i: token 32i + j) and -inf elsewhere. Each byte of the mask looks its 8 values
    up in a 256-row table (an embedding lookup, about 10x faster on a CPU than shifting bits out
    and `masked_fill`); the bytes of a word are read low first (every device here is little-endian)."""
    table = _BYTE_BIAS.get(device)
    if table is None:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
        table = _BYTE_BIAS[device] = torch.zeros(256, 8).masked_fill_(bits == 0, float("-inf")).to(device)
    words = bitmask.to(device, non_blocking=True)
    return F.embedding(words.view(torch.uint8).int(), table).flatten(1)[:, :vocab]


def sample(logits: torch.Tensor, s: SamplingInputs, token_bitmask: torch.Tensor | None = None) -> SamplerOutput:
    """One token per row of `logits` `[N, vocab]`, int64 on the logits' device, among the tokens
    `token_bitmask` allows (all without one); with `s.num_logprobs` >= 0 every row's token
    log-probability and that many top tokens too, from the unmasked logits."""
    logits = logits.float()
    chosen_from = logits
    if token_bitmask is not None:
        chosen_from = logits + mask_bias(token_bitmask, logits.shape[-1], logits.device)
    tokens = _tokens(chosen_from, s)
    lp = logprobs_of(logits, tokens, s.num_logprobs) if s.num_logprobs >= 0 else None
    return SamplerOutput(tokens, lp)


def _tokens(logits: torch.Tensor, s: SamplingInputs) -> torch.Tensor:
    greedy = logits.argmax(dim=-1)
    if s.all_greedy:
        return greedy
    random = s.temperature > 0
    scaled = logits / torch.where(random, s.temperature, 1.0)[:, None]
    u = uniform(s.seeds, s.draws)
    if not s.filtered:
        drawn = _draw(scaled.softmax(-1), u)
    else:
        probs, order = _filtered(scaled, s)
        drawn = order.gather(1, _draw(probs, u)[:, None]).squeeze(1)
    return torch.where(random, drawn, greedy)


def _filtered(scaled: torch.Tensor, s: SamplingInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k then top-p of the scaled logits: the probabilities in descending order, and that order."""
    ordered, order = scaled.sort(dim=-1, descending=True)
    kth = ordered.gather(1, (s.top_k.clamp(1, scaled.shape[-1]) - 1)[:, None])
    ordered = ordered.masked_fill(ordered < kth, float("-inf"))  # ties with the k-th stay, as topk's would
    probs = ordered.softmax(-1)
    # Drop a token when the mass before it already reaches top_p (the top token always stays).
    top_p = torch.where(s.top_p < 1.0, s.top_p, torch.inf)[:, None]
    return probs.masked_fill((probs.cumsum(-1) - probs) >= top_p, 0.0), order


def target_probs(logits: torch.Tensor, s: SamplingInputs) -> torch.Tensor:
    """`[N, vocab]`: the distribution each sampled row draws from (temperature, top-k, top-p)."""
    random = s.temperature > 0
    scaled = logits.float() / torch.where(random, s.temperature, 1.0)[:, None]
    if not s.filtered:
        return scaled.softmax(-1)
    probs, order = _filtered(scaled, s)
    probs = probs / probs.sum(-1, keepdim=True)  # top-p dropped some mass: what is left sums to 1
    return torch.zeros_like(probs).scatter_(1, order, probs)


_ACCEPT_STREAM = 0x2545F4914F6CDD1D  # xored into a seed: the acceptance tests' own stream of uniforms


def verify_drafts(logits: torch.Tensor, s: SamplingInputs, drafts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling of drafts from a proposal that puts all its mass on them (n-gram):
    per row, whether `drafts[i]` is accepted, and the token to emit where it is not. A greedy
    row accepts the argmax, which is also its replacement. A sampled row accepts the draft with
    probability p(draft) under its distribution p (a uniform from a stream of its own) and
    otherwise draws from p without the draft, renormalized (its usual uniform): the emitted token
    is distributed as p exactly (speculative sampling, Leviathan et al. and Chen et al. 2023)."""
    logits = logits.float()
    greedy = logits.argmax(-1)
    if s.all_greedy:
        return drafts == greedy, greedy
    probs = target_probs(logits, s)
    accepted = uniform(s.seeds ^ _ACCEPT_STREAM, s.draws) < probs.gather(1, drafts[:, None]).squeeze(1).double()
    residual = probs.scatter(1, drafts[:, None], 0.0)  # all zero only where p(draft) = 1: then always accepted
    replacement = _draw(residual, uniform(s.seeds, s.draws)).clamp(max=logits.shape[-1] - 1)
    random = s.temperature > 0
    return torch.where(random, accepted, drafts == greedy), torch.where(random, replacement, greedy)
