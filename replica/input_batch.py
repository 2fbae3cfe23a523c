"""The persistent batch: one row per request on the device, kept from step to step.

A row holds what the model runner needs of a request: its tokens, its block table and its
sampling parameters. It is written whole once, when the request joins (admitted, resumed,
swapped in, migrated in), and after that only where the request grew: every `block_size` tokens
a block id, and its new tokens when a step reads them from the host. An async decode reads
none (its input is the last step's sample, on the device), so a row of a request that only
decodes lags its outputs until it is read again (a sync step, a chunk of several tokens). A
request that leaves the device (finished, aborted, preempted, exported) gives its row back
through `remove`. A step's inputs are then gathered from the rows of the requests it schedules
(`step_inputs.py`) instead of being packed again from Python lists every step, as `packing.pack`
does (vLLM v1's `InputBatch`, in our size).

Rows are numpy arrays on the host; no torch here, so the diffs are tested without a model.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from shunter.mathutil import cdiv
from shunter.replica.request import PLACEHOLDER, Request
from shunter.replica.scheduler import ScheduledRequest

_NONE = np.zeros(0, dtype=np.int64)


@dataclass
class BatchWrites:
    """Cells written since the batch was made: a step that rebuilds its inputs shows here."""

    rows: int = 0  # whole rows (a request joined)
    tokens: int = 0  # tokens appended to a row (a request grew)
    blocks: int = 0  # block ids appended to a row


@dataclass(eq=False)
class Row:
    index: int
    request: Request  # the object, not the id: an id that leaves and comes back is a new request
    num_tokens: int  # the request's first tokens written into the row (real ones: never a placeholder)
    num_blocks: int


@dataclass
class StepRows:
    """One step's sequences in the scheduler's order, as rows of the batch."""

    rows: np.ndarray  # int64 [S]
    starts: np.ndarray  # int64 [S]: first position computed
    num_new: np.ndarray  # int64 [S]
    samples: np.ndarray  # bool [S]: the chunk reaches the end of the tokens, so a token is sampled
    # Async scheduling: sequences whose last input token is still on the device (a placeholder),
    # and for each, its index among the previous step's sampled rows (int64 [F] each).
    fill_seqs: np.ndarray = field(default_factory=lambda: _NONE)
    fill_from: np.ndarray = field(default_factory=lambda: _NONE)


class InputBatch:
    def __init__(self, max_rows: int, max_model_len: int, block_size: int, vocab_size: int) -> None:
        self.block_size = block_size
        self.vocab_size = vocab_size
        max_blocks = cdiv(max_model_len, block_size)
        # np.zeros maps untouched pages lazily: a row costs memory only as far as its tokens go.
        self.token_ids = np.zeros((max_rows, max_model_len), dtype=np.int64)
        self.block_table = np.zeros((max_rows, max_blocks), dtype=np.int32)
        self.num_blocks = np.zeros(max_rows, dtype=np.int64)
        self.num_prompt = np.zeros(max_rows, dtype=np.int64)
        self.temperature = np.zeros(max_rows, dtype=np.float32)  # 0: greedy
        self.top_k = np.zeros(max_rows, dtype=np.int64)  # vocab_size: off
        self.top_p = np.ones(max_rows, dtype=np.float32)
        self.seed = np.zeros(max_rows, dtype=np.int64)
        self.last_sample = np.full(max_rows, -1, dtype=np.int64)  # a row's index among its last step's samples
        self.num_logprobs = np.full(max_rows, -1, dtype=np.int64)  # top log-probabilities per token; -1: none
        self.logprob_rows = 0  # rows that ask for log-probabilities (0: the steps skip them unread)
        self.prompt_logprob_rows = 0  # rows that ask for prompt log-probabilities
        self.rows: dict[str, Row] = {}
        self._free = list(range(max_rows - 1, -1, -1))
        self.writes = BatchWrites()
        # The last step's requests and layout while nothing joined or left since: a step of the
        # same decodes is then that layout one token on (`_next_decodes`), with no pass over its rows.
        self._last: tuple[list[Request], StepRows] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def remove(self, request_id: str) -> None:
        """The request left the device; its row is free (a no-op for one without a row)."""
        row = self.rows.pop(request_id, None)
        if row is not None:
            self._last = None
            self._free.append(row.index)
            self.logprob_rows -= int(self.num_logprobs[row.index] >= 0)
            self.prompt_logprob_rows -= row.request.params.prompt_logprobs is not None

    def _join(self, req: Request, seed: int) -> Row:
        self.remove(req.request_id)  # a stale row of an earlier request of the same id
        if not self._free:
            raise RuntimeError(f"no free row for {req.request_id}: {len(self.rows)} rows in use")
        i = self._free.pop()
        self._last = None
        tokens = req.prompt_token_ids + req.output_token_ids
        n = len(tokens) - (1 if tokens[-1] == PLACEHOLDER else 0)
        self.token_ids[i, :n] = tokens[:n]
        p = req.params
        self.num_prompt[i] = len(req.prompt_token_ids)
        self.temperature[i] = p.temperature
        self.top_k[i] = p.top_k if 0 < p.top_k < self.vocab_size else self.vocab_size
        self.top_p[i] = p.top_p
        self.seed[i] = seed
        self.last_sample[i] = -1
        self.num_logprobs[i] = -1 if p.logprobs is None else p.logprobs
        self.logprob_rows += p.logprobs is not None
        self.prompt_logprob_rows += p.prompt_logprobs is not None
        row = self.rows[req.request_id] = Row(i, req, n, 0)
        self.writes.rows += 1
        return row

    def update(self, scheduled: list[ScheduledRequest], seed_of: Callable[[str], int],
               decodes: list[Request] | None = None) -> StepRows:
        """Bring the rows of this step's requests up to date and return the step's layout.

        `seed_of`: a joining request's sampling seed (read once, when its row is written).
        `decodes`: the step's requests when each is a one-token decode (`SchedulerOutput.decodes`);
        None for any other step."""
        last = self._last
        if decodes is not None and last is not None and decodes == last[0]:  # the same objects (identity eq)
            step = self._next_decodes(decodes, scheduled, last[1])
            if step is not None:
                self._last = (decodes, step)
                return step
        step = self._update_rows(scheduled, seed_of)
        self._last = (decodes, step) if decodes is not None else None
        return step

    def _next_decodes(self, decodes: list[Request], scheduled: list[ScheduledRequest],
                      last: StepRows) -> StepRows | None:
        """The layout of a step that decodes the last step's requests again, one token each,
        under async scheduling: each row computes one position further and takes its input from
        its own last sample, on the device (the same value as the host's, if it was read back
        meanwhile). Only rows that reach a new block are written (its id). None unless the last
        step filled every row from the device (a synchronous step writes its tokens from the host
        instead); a row filled so also sampled, since a placeholder is always a request's last token."""
        if len(last.fill_seqs) != len(last.rows):
            return None
        rows = last.rows
        starts = last.starts + last.num_new  # each request's tokens computed by now
        for i in np.flatnonzero(starts // self.block_size >= self.num_blocks[rows]).tolist():
            self._grow_blocks(self.rows[decodes[i].request_id], scheduled[i].block_ids)
        n = len(rows)
        fills = np.arange(n)
        fill_from = self.last_sample[rows]
        self.last_sample[rows] = fills
        return StepRows(rows, starts, np.ones(n, dtype=np.int64), last.samples, fills, fill_from)

    def _update_rows(self, scheduled: list[ScheduledRequest], seed_of: Callable[[str], int]) -> StepRows:
        rows_get = self.rows.get
        seqs: list[int] = []  # per sequence: row, start, end, the request's tokens (flat, one array after)
        cells: list[int] = []  # tokens to write: row, position, token (flat, one assignment after)
        fill_seqs: list[int] = []
        for i, s in enumerate(scheduled):
            req = s.request
            row = rows_get(req.request_id)
            if row is None or row.request is not req:
                row = self._join(req, seed_of(req.request_id))
            blocks = s.block_ids
            if len(blocks) > row.num_blocks:
                self._grow_blocks(row, blocks)
            start = s.start
            end = start + s.num_new_tokens
            outputs = req.output_token_ids
            num_prompt = req.num_prompt_tokens
            total = num_prompt + len(outputs)
            if end == total and end - start == 1 and outputs and outputs[-1] == PLACEHOLDER:
                # An async decode, most of a step: its one input is the last step's sample, on the
                # device. No host token is read, so none is written: the row catches up in the
                # general case below, when a step reads tokens from it.
                fill_seqs.append(i)
            else:
                have = row.num_tokens
                if end > have:  # tokens made since the row was written: outputs (the prompt came whole)
                    new = outputs[have - num_prompt : end - num_prompt]
                    if new[-1] == PLACEHOLDER:  # its value is on the device; the row learns it later
                        new.pop()
                        fill_seqs.append(i)
                    for k, token in enumerate(new, have):
                        cells += (row.index, k, token)
                    row.num_tokens = have + len(new)
            seqs += (row.index, start, end, total)
        rows, starts, ends, totals = np.fromiter(seqs, np.int64, len(seqs)).reshape(-1, 4).T.copy()
        samples = ends == totals
        if cells:
            r, c, v = np.array(cells, dtype=np.int64).reshape(-1, 3).T
            self.token_ids[r, c] = v
            self.writes.tokens += len(v)
        if len(fill_seqs) == len(scheduled):  # every sequence an async decode: most steps
            fills = np.arange(len(scheduled))
            fill_from = self.last_sample[rows]
        else:
            fills = np.fromiter(fill_seqs, np.int64, len(fill_seqs))
            fill_from = self.last_sample[rows[fills]]
        sampled_rows = rows[samples]
        self.last_sample[sampled_rows] = np.arange(len(sampled_rows))
        return StepRows(rows, starts, ends - starts, samples, fills, fill_from)

    def _grow_blocks(self, row: Row, blocks: list[int]) -> None:
        have, need = row.num_blocks, len(blocks)
        self.block_table[row.index, have:need] = blocks[have:]
        self.num_blocks[row.index] = row.num_blocks = need
        self.writes.blocks += need - have

    def check(self, running: list[Request]) -> None:
        """Every row belongs to a running request (tests: a missed `remove` shows here)."""
        live = {id(r) for r in running}
        for rid, row in self.rows.items():
            assert id(row.request) in live, f"row {row.index} holds {rid}, which is not running"
        assert len(self.rows) + len(self._free) == len(self.num_blocks)
