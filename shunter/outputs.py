"""What the engine gives back: per-step deltas while streaming, whole results offline."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestOutput:
    """The state of one request after an engine step.

    `new_token_ids` / `new_text` are what this step made (what a stream sends); `output_token_ids`
    / `text` are everything so far. `finish_reason` is set once: "stop", "length", "abort" or "deadline".
    """

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    new_token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    text: str = ""  # all text so far (cut at a stop string); empty for models without a tokenizer
    new_text: str = ""  # the text this step released
    num_cached_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
