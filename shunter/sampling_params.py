"""What a user asks of one generation: how long, how random, when to stop."""
from __future__ import annotations

from dataclasses import dataclass, field

from shunter.logprobs import MAX_LOGPROBS
from shunter.structured_output import KINDS, StructuredOutput

# Priority classes, most important first: a class's level is what policies order by.
CLASS_LEVEL = {"interactive": 0, "batch": 1}


@dataclass
class SamplingParams:
    """Sampling settings for one request, validated at construction.

    `temperature=0` means greedy. `top_k=-1` (or 0) turns top-k off. `seed` makes a sampled
    request reproducible on its own, whatever else shares its batch. `n` samples per prompt
    (offline `LLM` only): sample i draws with seed `seed + i` when a seed is given.
    `logprobs=k` returns each output token's log-probability and the k most likely tokens at its
    position (0: the token's alone); `prompt_logprobs=k` the same for every prompt token after the
    first. Both are of the raw distribution, before temperature and filters (`shunter/logprobs.py`).
    `structured_output` constrains the output to a JSON schema, a regex, a choice or a grammar
    (`shunter/structured_output.py`; a dict is taken as its fields).
    """

    max_tokens: int = 16
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    structured_output: StructuredOutput | None = None
    # Scheduling hints; policies may use them, tokens never depend on them.
    priority: str = "interactive"
    ttft_ms: float | None = None
    tbt_ms: float | None = None
    deadline_ms: float | None = None
    expected_output_tokens: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off), 0 (off) or a positive integer, got {self.top_k!r}")
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise ValueError("stop must be a list of non-empty strings")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError("stop_token_ids must be non-negative integers")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or not 0 <= value <= MAX_LOGPROBS):
                raise ValueError(f"{name} must be an integer in [0, {MAX_LOGPROBS}] (or None), got {value!r}")
        if isinstance(self.structured_output, dict):
            unknown = sorted(set(self.structured_output) - set(KINDS))
            if unknown:
                raise ValueError(f"structured_output: unknown field {unknown[0]!r}; the fields are {', '.join(KINDS)}")
            self.structured_output = StructuredOutput(**self.structured_output)
        if self.structured_output is not None and not isinstance(self.structured_output, StructuredOutput):
            raise ValueError(f"structured_output must be a StructuredOutput, got {type(self.structured_output).__name__}")
        if self.priority not in CLASS_LEVEL:
            raise ValueError(f"priority must be one of {', '.join(CLASS_LEVEL)}, got {self.priority!r}")
        for name in ("ttft_ms", "tbt_ms", "deadline_ms"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.expected_output_tokens is not None and self.expected_output_tokens < 0:
            raise ValueError(f"expected_output_tokens must be >= 0, got {self.expected_output_tokens}")

    def as_dict(self) -> dict:
        """Every field, JSON-ready; `SamplingParams(**d)` builds it again."""
        d = dict(vars(self))
        if self.structured_output is not None:
            d["structured_output"] = self.structured_output.fields()
        return d

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
