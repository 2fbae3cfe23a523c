"""Structured output on a replica: each constrained request's matcher and the step's token mask.

The library is llguidance, not xgrammar, for what it costs per request and per step: a new
schema is ready in about a millisecond (its lexer is built lazily as the output goes, with no
ahead-of-time pass over the vocabulary per grammar), a mask row takes tens of microseconds on
the CPU, the rows of a batch are filled in parallel on its own threads, and it has no dependency
beyond itself (xgrammar pulls torch-specific builds and compiles each grammar up front).

A grammar is compiled on a worker thread (`GrammarCompiler.compile`), never on the engine's step
thread: the request waits outside the scheduler until it is ready. Compiled grammars are kept
(LRU) by their text, so a schema seen before costs one copy of its matcher. The mask is a bitmask
(int32, one bit a token, `[rows, ceil(vocab / 32)]`) built on the host before the step launches;
the sampler applies it on the device (`sampler.py`).
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from shunter.structured_output import StructuredOutput

log = logging.getLogger(__name__)

MAX_CACHED_GRAMMARS = 64


class Grammar:
    """One request's place in its grammar: what tokens may come next, and whether it is done."""

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher

    def accept(self, token: int) -> bool:
        """Advance by the sampled token; True when the output must end here (the grammar is
        complete and allows nothing more, or, never expected under the mask, it broke)."""
        m = self.matcher
        if not m.consume_token(token) or m.is_error():
            log.warning("grammar rejected token %d: %s", token, m.get_error())
            return True
        return m.is_stopped()

    def replay(self, tokens: list[int]) -> None:
        """Advance over tokens already produced elsewhere (a migrated request's output)."""
        for token in tokens:
            self.accept(token)


class GrammarCompiler:
    """Builds matchers for `StructuredOutput` specs against one tokenizer, off the step thread."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: tuple[int, ...]) -> None:
        self._hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos = list(eos_token_ids)
        self._ll_tokenizer: Any = None  # built on first use or by `warm` (about half a second)
        self._templates: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="grammar")
        self._mask_executor: Any = None

    def warm(self) -> None:
        """Wrap the tokenizer now, on the worker (a server's start-up), not at the first request."""
        self._worker.submit(self._tokenizer)

    def _tokenizer(self) -> Any:
        with self._lock:
            if self._ll_tokenizer is None:
                import llguidance.hf

                self._ll_tokenizer = llguidance.hf.from_tokenizer(self._hf_tokenizer, n_vocab=self.vocab_size,
                                                                  eos_token=self._eos)
            return self._ll_tokenizer

    def compile(self, spec: StructuredOutput) -> Future[Grammar]:
        """A matcher for `spec`, made on the worker thread."""
        return self._worker.submit(self.compile_now, spec)

    def compile_now(self, spec: StructuredOutput) -> Grammar:
        """A matcher for `spec`, made on this thread (imports: the request arrives mid-output)."""
        import llguidance

        tokenizer = self._tokenizer()
        with self._lock:
            template = self._templates.get(spec.compiled)
            if template is not None:
                self._templates.move_to_end(spec.compiled)
        if template is None:
            template = llguidance.LLMatcher(tokenizer, spec.compiled)
            first = torch.zeros((1, (self.vocab_size + 31) // 32), dtype=torch.int32)
            if not template.is_error():
                template.unsafe_compute_mask_ptr(first.data_ptr(), first.shape[1] * 4)
            if template.is_error() or not first.any():
                error = template.get_error().strip().splitlines()
                raise ValueError(f"structured_output.{spec.kind}: no token can start an output it accepts"
                                 + (f" ({error[0]})" if error else ""))
            with self._lock:
                self._templates[spec.compiled] = template
                while len(self._templates) > MAX_CACHED_GRAMMARS:
                    self._templates.popitem(last=False)
        return Grammar(template.deep_copy())

    def masks(self, grammars: list[tuple[int, Grammar]], num_rows: int) -> torch.Tensor:
        """The bitmask of a step with `num_rows` sampled rows: all tokens allowed, except in the
        rows `grammars` names, which get their grammar's next-token mask (filled in parallel)."""
        import llguidance

        if self._mask_executor is None:
            self._mask_executor = llguidance.LLExecutor()
        bitmask = torch.full((num_rows, (self.vocab_size + 31) // 32), -1, dtype=torch.int32)
        # What `llguidance.torch.fill_next_token_bitmask_par` does; that module is not imported:
        # it compiles a helper with torch.compile on import, which costs seconds.
        self._mask_executor.unsafe_compute_mask_ptr([(g.matcher, row) for row, g in grammars], bitmask.data_ptr(),
                                                    bitmask.shape[1] * 4, num_rows)
        return bitmask

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
