"""A step's inputs: gathered from the persistent batch's rows into one staging buffer, then
copied to the device in one non-blocking transfer (from pinned memory on CUDA).

`gather` is a pure numpy function (the step's ragged layout, as `packing.pack` builds it from
lists, the test's oracle). `Staging` owns the buffers: every segment sits at a fixed offset, the
block table last with the step's own width, so one copy of a prefix carries the whole step. The
host side is double-buffered: with async scheduling the next step is written while the copy of
this one may not have run yet; the device side is single, since the stream orders each copy
after the step before it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shunter.replica.attention_metadata import AttentionMetadata
from shunter.replica.input_batch import InputBatch, StepRows
from shunter.replica.packing import Batch
from shunter.sampling_params import SamplingParams

# name: (dtype, capacity key): "t" tokens, "s" sequences, "s1" sequences + 1
SEGMENTS: dict[str, tuple[np.dtype, str]] = {
    "input_ids": (np.dtype(np.int64), "t"),
    "positions": (np.dtype(np.int64), "t"),
    "slot_mapping": (np.dtype(np.int64), "t"),
    "logits_indices": (np.dtype(np.int64), "s"),
    "top_k": (np.dtype(np.int64), "s"),
    "seeds": (np.dtype(np.int64), "s"),
    "draws": (np.dtype(np.int64), "s"),
    "fill_dst": (np.dtype(np.int64), "s"),
    "fill_src": (np.dtype(np.int64), "s"),
    "cu_seqlens": (np.dtype(np.int32), "s1"),
    "context_lens": (np.dtype(np.int32), "s"),
    "temperature": (np.dtype(np.float32), "s"),
    "top_p": (np.dtype(np.float32), "s"),
}
TORCH_DTYPES = {np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32, np.dtype(np.float32): torch.float32}


@dataclass(frozen=True)
class Sizes:
    tokens: int  # T
    seqs: int  # S
    sampled: int  # N
    width: int  # W: block-table columns
    fills: int  # F
    max_query_len: int
    all_greedy: bool  # no sampled row draws at random: the sampler only takes the argmax
    filtered: bool  # some random row has top-k or top-p on: the sampler sorts
    logprobs: int = -1  # the most top log-probabilities a sampled row asks for; -1: no row asks


def gather(batch: InputBatch, step: StepRows, out: dict[str, np.ndarray], block_table: np.ndarray) -> Sizes:
    """Write the step's inputs into `out` (one array per `SEGMENTS` name, at least as long as
    the step needs) and `block_table` (flat, at least S * W); returns the sizes used."""
    rows, starts, counts, samples = step.rows, step.starts, step.num_new, step.samples
    S = len(rows)
    T = int(counts.sum())
    bs = batch.block_size
    cu = out["cu_seqlens"][: S + 1]
    cu[0] = 0
    np.cumsum(counts, out=cu[1:], dtype=np.int32)
    if T == S:  # every sequence computes one token (decode): no repeat needed
        token_rows, positions = rows, starts
    else:
        token_rows = np.repeat(rows, counts)
        positions = np.repeat(starts - cu[:-1], counts) + np.arange(T)
    out["positions"][:T] = positions
    out["input_ids"][:T] = batch.token_ids[token_rows, positions]
    out["slot_mapping"][:T] = batch.block_table[token_rows, positions // bs] * bs + positions % bs
    ends = starts + counts
    out["context_lens"][:S] = ends
    W = int(batch.num_blocks[rows].max())
    block_table[: S * W].reshape(S, W)[...] = batch.block_table[rows, :W]  # 2x np.take(..., out=) from the strided view
    last = cu[1:] - 1
    N = int(np.count_nonzero(samples))
    sampled = rows[samples] if N < S else rows
    out["logits_indices"][:N] = last[samples] if N < S else last
    temperature = out["temperature"][:N]
    temperature[:] = batch.temperature[sampled]
    top_k, top_p = out["top_k"][:N], out["top_p"][:N]
    top_k[:] = batch.top_k[sampled]
    top_p[:] = batch.top_p[sampled]
    out["seeds"][:N] = batch.seed[sampled]
    out["draws"][:N] = (ends[samples] if N < S else ends) - batch.num_prompt[sampled]
    F = len(step.fill_seqs)
    if F:
        out["fill_dst"][:F] = last[step.fill_seqs]
        out["fill_src"][:F] = step.fill_from
    random = temperature > 0
    all_greedy = not random.any()
    filtered = not all_greedy and bool(((top_k < batch.vocab_size) | (top_p < 1.0))[random].any())
    logprobs = int(batch.num_logprobs[sampled].max()) if N and batch.logprob_rows else -1
    return Sizes(T, S, N, W, F, int(counts.max()), all_greedy, filtered, logprobs)


@dataclass
class SamplingInputs:
    """Per sampled row, on the device; the two flags are known on the host (no sync to branch)."""

    temperature: torch.Tensor  # float32 [N]; 0: greedy
    top_k: torch.Tensor  # int64 [N]; the vocabulary size when off
    top_p: torch.Tensor  # float32 [N]
    seeds: torch.Tensor  # int64 [N]
    draws: torch.Tensor  # int64 [N]: the output index of the token drawn (the request's draw counter)
    all_greedy: bool
    filtered: bool
    num_logprobs: int = -1  # top log-probabilities to compute per row (the most any row asks); -1: none

    @classmethod
    def of(cls, params: list[SamplingParams], seeds: list[int], draws: list[int], vocab_size: int,
           device: torch.device | str = "cpu") -> SamplingInputs:
        """From Python lists (the packed path and tests; the persistent batch gathers its rows)."""
        temperature = [p.temperature for p in params]
        top_k = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]
        top_p = [p.top_p for p in params]
        random = [t > 0 for t in temperature]
        asked = [p.logprobs for p in params if p.logprobs is not None]

        def tensor(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        return cls(tensor(temperature, torch.float32), tensor(top_k, torch.int64), tensor(top_p, torch.float32),
                   tensor(seeds, torch.int64), tensor(draws, torch.int64), all_greedy=not any(random),
                   filtered=any(r and (k < vocab_size or p < 1.0) for r, k, p in zip(random, top_k, top_p)),
                   num_logprobs=max(asked, default=-1))


@dataclass
class StepInputs:
    batch: Batch
    sampling: SamplingInputs
    fill_dst: torch.Tensor  # int64 [F]: rows of input_ids that take ...
    fill_src: torch.Tensor  # ... the previous step's sampled token at these indices
    sizes: Sizes


class Staging:
    def __init__(self, max_tokens: int, max_seqs: int, max_blocks: int, device: torch.device) -> None:
        self.device = device
        caps = {"t": max_tokens, "s": max_seqs, "s1": max_seqs + 1}
        self.offsets: dict[str, int] = {}
        offset = 0
        for name, (dtype, cap) in SEGMENTS.items():
            self.offsets[name] = offset
            offset += -(-caps[cap] * dtype.itemsize // 8) * 8  # 8-byte aligned
        self.table_offset = offset
        self.nbytes = offset + max_seqs * max_blocks * 4
        cuda = device.type == "cuda"
        hosts = [torch.zeros(self.nbytes, dtype=torch.uint8, pin_memory=cuda) for _ in range(2 if cuda else 1)]
        self._host = [(h, self._numpy_views(h.numpy(), caps)) for h in hosts]
        self._device = torch.zeros(self.nbytes, dtype=torch.uint8, device=device) if cuda else hosts[0]
        self._device_views = {
            name: self._device[self.offsets[name] :][: caps[cap] * dtype.itemsize].view(TORCH_DTYPES[dtype])
            for name, (dtype, cap) in SEGMENTS.items()
        }
        self._parity = 0
        self._inputs: dict[Sizes, StepInputs] = {}  # device views by sizes: steady decode reuses its last ones

    def _numpy_views(self, raw: np.ndarray, caps: dict[str, int]) -> dict[str, np.ndarray]:
        views = {}
        for name, (dtype, cap) in SEGMENTS.items():
            start = self.offsets[name]
            views[name] = raw[start : start + caps[cap] * dtype.itemsize].view(dtype)
        views["block_table"] = raw[self.table_offset :].view(np.int32)
        return views

    def stage(self, batch: InputBatch, step: StepRows) -> StepInputs:
        """Gather the step into the host buffer and start its one copy to the device."""
        host, views = self._host[self._parity]
        self._parity = (self._parity + 1) % len(self._host)
        sizes = gather(batch, step, views, views["block_table"])
        used = self.table_offset + sizes.seqs * sizes.width * 4
        if self._device is not host:
            self._device[:used].copy_(host[:used], non_blocking=True)
        inputs = self._inputs.get(sizes)
        if inputs is None:
            if len(self._inputs) >= 64:
                self._inputs.clear()
            inputs = self._inputs[sizes] = self._views(sizes)
        return inputs

    def _views(self, z: Sizes) -> StepInputs:
        d = self._device_views
        T, S, N, F = z.tokens, z.seqs, z.sampled, z.fills
        table = self._device[self.table_offset : self.table_offset + S * z.width * 4].view(torch.int32).view(S, z.width)
        attn = AttentionMetadata(d["slot_mapping"][:T], table, d["cu_seqlens"][: S + 1], d["context_lens"][:S],
                                 z.max_query_len)
        sampling = SamplingInputs(d["temperature"][:N], d["top_k"][:N], d["top_p"][:N], d["seeds"][:N],
                                  d["draws"][:N], z.all_greedy, z.filtered, z.logprobs)
        batch = Batch(d["input_ids"][:T], d["positions"][:T], attn, d["logits_indices"][:N])
        return StepInputs(batch, sampling, d["fill_dst"][:F], d["fill_src"][:F], z)
