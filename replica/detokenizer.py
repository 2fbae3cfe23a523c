"""Incremental detokenization and stop strings.

Decoding token by token splits multi-byte characters and breaks word-piece spacing, so text is
decoded over a small window of recent tokens and released only once it no longer ends in an
incomplete character (U+FFFD).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class IncrementalDetokenizer:
    tokenizer: Any
    stop: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    prefix_offset: int = 0  # window start: tokens before it are already fully in `text`
    read_offset: int = 0  # tokens before it have been released as text
    released: int = 0  # characters of `text` already handed out
    stopped: bool = False

    def add(self, token_id: int) -> str:
        """Feed one token; returns the new text it releases (possibly empty)."""
        if self.stopped:
            return ""
        self.token_ids.append(token_id)
        prefix = self.tokenizer.decode(self.token_ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full = self.tokenizer.decode(self.token_ids[self.prefix_offset :], skip_special_tokens=True)
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""
        new_text = full[len(prefix) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        return self._append(new_text)

    def _append(self, new_text: str) -> str:
        """Add text and release what is safe: text that a stop string could still end inside is
        held back, and the text is cut at the first stop string (which is never released)."""
        search_from = len(self.text)
        self.text += new_text
        if not self.stop:
            return self._release(len(self.text))
        longest = max(len(s) for s in self.stop)
        search_from = max(0, search_from - longest + 1)
        hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            self.text = self.text[: min(hits)]
            return self._release(len(self.text))
        return self._release(len(self.text) - longest + 1)

    def _release(self, upto: int) -> str:
        if upto <= self.released:
            return ""
        out, self.released = self.text[self.released : upto], upto
        return out

    def flush(self) -> str:
        """The held-back text, when the request ends for another reason than a stop string."""
        return self._release(len(self.text))


def detokenize(detok: IncrementalDetokenizer | None, tokens: list[int],
               finish: str | None) -> tuple[list[int], str, str | None]:
    """(tokens to send, their text, finish reason): cut at the token that completes a stop string."""
    if detok is None:
        return tokens, "", finish
    text = []
    for i, token in enumerate(tokens):
        text.append(detok.add(token))
        if detok.stopped:
            return tokens[: i + 1], "".join(text), "stop"
    if finish is not None:
        text.append(detok.flush())
    return tokens, "".join(text), finish
