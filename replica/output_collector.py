"""Fold an engine's per-step `EngineOutput`s into whole `RequestOutput`s (vLLM's output processor).

A prompt asked for with `n` samples runs as `n` engine requests (`{request_id}#{i}`) that share
the prompt's KV blocks through the prefix cache; its `RequestOutput` is complete when all are.
Log-probabilities become vLLM's dicts here, each token decoded once (`decode`, cached by id).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from shunter.logprobs import TokenLogprobs
from shunter.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestMetrics, RequestOutput
from shunter.replica.engine_protocol import EngineOutput


@dataclass
class _Pending:
    output: RequestOutput
    open: int  # samples not finished yet


@dataclass
class OutputCollector:
    pending: dict[str, _Pending] = field(default_factory=dict)  # by the user's request id
    parent: dict[str, tuple[str, int]] = field(default_factory=dict)  # engine request id -> (request id, index)
    decode: Callable[[int], str] | None = None  # one token's text, for `Logprob.decoded_token`
    _decoded: dict[int, str] = field(default_factory=dict)

    def expect(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], n: int = 1) -> list[str]:
        """Register a request; returns the engine request ids to add for its `n` samples."""
        ids = [request_id] if n == 1 else [f"{request_id}#{i}" for i in range(n)]
        outputs = [CompletionOutput(i, "", []) for i in range(n)]
        self.pending[request_id] = _Pending(RequestOutput(request_id, prompt, list(prompt_token_ids), outputs), n)
        for i, engine_id in enumerate(ids):
            self.parent[engine_id] = (request_id, i)
        return ids

    def fold(self, outs: Iterable[EngineOutput]) -> list[RequestOutput]:
        """Add one step's outputs; returns the requests this step completed."""
        done = []
        for out in outs:
            request_id, index = self.parent.get(out.request_id, (out.request_id, 0))
            if request_id not in self.pending:  # added to the engine directly: learn it now
                self.expect(request_id, None, [])
            pending = self.pending[request_id]
            result = pending.output
            sample = result.outputs[index]
            sample.token_ids.extend(out.new_token_ids)
            sample.text += out.new_text
            if out.new_logprobs is not None:
                if sample.logprobs is None:
                    sample.logprobs, sample.cumulative_logprob = [], 0.0
                sample.logprobs += [self._position(p) for p in out.new_logprobs]
                sample.cumulative_logprob += sum(p.logprob for p in out.new_logprobs)
            if out.prompt_logprobs is not None and result.prompt_logprobs is None:
                result.prompt_logprobs = [None if p is None else self._position(p) for p in out.prompt_logprobs]
            if result.metrics is None:
                result.metrics = RequestMetrics(out.arrival_time)
            if result.metrics.first_token_time is None:
                result.metrics.first_token_time = out.first_token_time
            result.num_cached_tokens = max(result.num_cached_tokens, out.num_cached_tokens)
            if out.finished and not sample.finished:
                sample.finish_reason = out.finish_reason
                pending.open -= 1
                self.parent.pop(out.request_id, None)
                if pending.open == 0:
                    result.finished = True
                    del self.pending[request_id]
                    done.append(result)
        return done

    def _position(self, p: TokenLogprobs) -> PositionLogprobs:
        """vLLM's dict for one position: the token there first, then the top k."""
        at = {p.token_id: Logprob(p.logprob, p.rank, self._text(p.token_id))}
        for rank, (token, logprob) in enumerate(zip(p.top_ids, p.top_logprobs), 1):
            if token not in at:
                at[token] = Logprob(logprob, rank, self._text(token))
        return at

    def _text(self, token: int) -> str | None:
        if self.decode is None:
            return None
        text = self._decoded.get(token)
        if text is None:
            text = self._decoded[token] = self.decode(token)
        return text
