"""Log-probabilities as every layer passes them on: one `TokenLogprobs` per position of a sequence.

They come from the model's raw distribution at that position (log-softmax of the logits, before
temperature, top-k/top-p, penalties or masks: vLLM v1's default), so a greedy request gets the
same numbers as a sampled one. A position holds the token that is there (the one sampled, or the
prompt's next token) with its log-probability and rank, and the `k` most likely tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_LOGPROBS = 20  # the most top tokens a request may ask for per position (OpenAI's top_logprobs limit)


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    rank: int  # 1 + the number of tokens more likely than it
    top_ids: tuple[int, ...] = ()  # the k most likely tokens, most likely first
    top_logprobs: tuple[float, ...] = ()

    def top(self) -> list[tuple[int, float]]:
        return list(zip(self.top_ids, self.top_logprobs))


def cumulative(logprobs: list[TokenLogprobs]) -> float:
    return sum(p.logprob for p in logprobs)
