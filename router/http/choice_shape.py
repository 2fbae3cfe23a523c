"""One choice's chunks in OpenAI's shape beyond their text: the echoed prompt (completions'
`echo`) ahead of the first, and the log-probabilities of their tokens, in completions' shape or
chat's.

A token's text is its own decoding (`token_id:N` without a tokenizer, as vLLM writes it), so the
texts of a multi-byte character's tokens are not the character; `text_offset` counts them from
the start of the choice's text (the echoed prompt's first token is at 0), across chunks.
"""
from __future__ import annotations

from typing import Any, Iterable

from shunter.logprobs import TokenLogprobs
from shunter.router.http.protocol import ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob
from shunter.router.http.request import Choice
from shunter.router.http.text_stream import TextChunk


class ChoiceShape:
    """Keeps what a choice's shape needs across its chunks: whether the prompt went out, the text offset."""

    def __init__(self, choice: Choice, tokenizer: Any, chat: bool) -> None:
        self.choice, self.tokenizer, self.chat = choice, tokenizer, chat
        self.started = False
        self.offset = 0

    def shape(self, chunk: TextChunk) -> tuple[str, CompletionLogprobs | ChatLogprobs | None]:
        """The chunk's text (the prompt's ahead of the first) and its log-probabilities (None: not asked)."""
        first, self.started = not self.started, True
        text = (self.choice.echo or "") + chunk.text if first else chunk.text
        if self.choice.params.logprobs is None:
            return text, None
        if self.chat:
            return text, ChatLogprobs(content=[self._chat(p) for p in chunk.logprobs or []])
        positions: list[tuple[int, TokenLogprobs | None]] = []
        if first and self.choice.echo is not None:
            prompt = chunk.prompt_logprobs or [None] * len(self.choice.prompt_token_ids)
            positions += zip(self.choice.prompt_token_ids, prompt)
        positions += ((p.token_id, p) for p in chunk.logprobs or [])
        return text, self._completion(positions)

    def _token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id]) if self.tokenizer is not None else f"token_id:{token_id}"

    def _completion(self, positions: Iterable[tuple[int, TokenLogprobs | None]]) -> CompletionLogprobs:
        out = CompletionLogprobs()
        for token_id, p in positions:
            token = self._token(token_id)
            out.tokens.append(token)
            out.token_logprobs.append(None if p is None else p.logprob)
            out.top_logprobs.append(None if p is None else {self._token(t): lp for t, lp in p.top()})
            out.text_offset.append(self.offset)
            self.offset += len(token)
        return out

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        token = self._token(token_id)
        return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))

    def _chat(self, p: TokenLogprobs) -> ChatTokenLogprob:
        token = self._top(p.token_id, p.logprob)
        return ChatTokenLogprob(token=token.token, logprob=token.logprob, bytes=token.bytes,
                                top_logprobs=[self._top(t, lp) for t, lp in p.top()])


def joined(a: CompletionLogprobs | ChatLogprobs | None,
           b: CompletionLogprobs | ChatLogprobs | None) -> CompletionLogprobs | ChatLogprobs | None:
    """One choice's log-probabilities over two runs of its chunks, in order."""
    if a is None or b is None:
        return a if b is None else b
    if isinstance(a, ChatLogprobs):
        return ChatLogprobs(content=a.content + b.content)
    return CompletionLogprobs(tokens=a.tokens + b.tokens, token_logprobs=a.token_logprobs + b.token_logprobs,
                              top_logprobs=a.top_logprobs + b.top_logprobs, text_offset=a.text_offset + b.text_offset)
