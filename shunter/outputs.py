"""What the engine gives back: per-step deltas while streaming, whole results offline."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestOutput:
    """The state of one request after an engine step.

    `new_token_ids` are the tokens made in this step (what a stream sends); `output_token_ids`
    is everything so far. `finish_reason` is set once: "stop", "length", "abort" or "deadline".
    """

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    new_token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    text: str = ""
    num_cached_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
