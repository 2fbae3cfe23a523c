"""CUDA graphs of the decode step at fixed batch sizes.

A decode step of a small model on a GPU is launch-bound: hundreds of small kernels whose launch
costs more than their work. Capturing the whole forward once per batch size and replaying it
removes that cost. A graph replays fixed addresses, so every step copies its batch into static
buffers padded to the next captured size: padded rows store nothing (slot -1) and attend one
cached token of block 0, so they stay finite and touch no sequence's KV. Only pure decode steps
(one query per sequence) replay; prefill chunks run eagerly.

A size is captured the first time a step of that size runs, so a run captures the sizes it
uses and no others (a server that never sees 200 sequences never pays for their graph): the
static buffers then hold that step's real inputs, and the warm-up runs before the capture store
the same keys and values the replay stores right after. Without CUDA (`capture=False`) the same
padding runs the model eagerly on the static buffers, which is how the padding is tested on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from shunter.replica.attention_metadata import AttentionMetadata
from shunter.replica.packing import Batch


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to `max_num_seqs` (and `max_num_seqs` itself)."""
    sizes = [n for n in (1, 2, 4, 8) if n < max_num_seqs] + list(range(16, max_num_seqs, 16))
    return sorted(set(sizes + [max_num_seqs]))


@dataclass
class _Buffers:
    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    cu_seqlens_q: torch.Tensor

    @classmethod
    def allocate(cls, max_seqs: int, max_blocks: int, device: torch.device) -> "_Buffers":
        return cls(
            input_ids=torch.zeros(max_seqs, dtype=torch.long, device=device),
            positions=torch.zeros(max_seqs, dtype=torch.long, device=device),
            slot_mapping=torch.full((max_seqs,), -1, dtype=torch.long, device=device),
            block_tables=torch.zeros(max_seqs, max_blocks, dtype=torch.int32, device=device),
            context_lens=torch.ones(max_seqs, dtype=torch.int32, device=device),
            cu_seqlens_q=torch.arange(max_seqs + 1, dtype=torch.int32, device=device),
        )

    def attn(self, n: int) -> AttentionMetadata:
        return AttentionMetadata(self.slot_mapping[:n], self.block_tables[:n], self.cu_seqlens_q[: n + 1],
                                 self.context_lens[:n], max_query_len=1)


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, kv_caches: list, max_num_seqs: int, max_blocks: int,
                 device: torch.device, capture: bool) -> None:
        self.model, self.kv_caches = model, kv_caches
        self.sizes = graph_batch_sizes(max_num_seqs)
        self.max_blocks = max_blocks
        self.buffers = _Buffers.allocate(self.sizes[-1], max_blocks, device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.capture = capture
        self._pool = None  # one memory pool for every graph: each reuses what the others left free
        # Waits out other threads' CUDA work (the CPU tier's copies, `replica/kv_offloads.py`): a
        # capture fails if another thread makes a call a capture forbids meanwhile.
        self.before_capture: Callable[[], None] | None = None

    def fits(self, batch: Batch) -> bool:
        attn = batch.attn
        return (attn.max_query_len == 1 and attn.context_lens.numel() <= self.sizes[-1]
                and attn.block_tables.shape[1] <= self.max_blocks)

    @torch.inference_mode()
    def run(self, batch: Batch) -> torch.Tensor:
        """Hidden states `[S, hidden]` of a decode batch that `fits`."""
        S = batch.input_ids.numel()
        n = next(size for size in self.sizes if size >= S)
        b = self.buffers
        width = batch.attn.block_tables.shape[1]
        b.input_ids[:S].copy_(batch.input_ids)
        b.positions[:S].copy_(batch.positions)
        b.slot_mapping[:S].copy_(batch.attn.slot_mapping)
        b.slot_mapping[S:n].fill_(-1)
        # Columns past `width` and padded rows keep stale block ids: always valid ones, and read
        # only below each row's context length (one token for a padded row), so no clearing.
        b.block_tables[:S, :width].copy_(batch.attn.block_tables)
        b.context_lens[:S].copy_(batch.attn.context_lens)
        b.context_lens[S:n].fill_(1)
        if self.capture and n not in self.graphs:
            self._capture(n)
        if n in self.graphs:
            graph, hidden = self.graphs[n]
            graph.replay()
        else:
            hidden = self._forward(n)
        return hidden[:S]

    def _forward(self, n: int) -> torch.Tensor:
        b = self.buffers
        return self.model(b.input_ids[:n], b.positions[:n], self.kv_caches, b.attn(n))

    def capture_all(self) -> None:
        """Capture every size not captured yet, largest first (a benchmark does, before timing):
        on rows that store nothing and attend one cached token."""
        self.buffers.slot_mapping.fill_(-1)
        self.buffers.context_lens.fill_(1)
        for n in reversed(self.sizes):
            if n not in self.graphs:
                self._capture(n)

    @torch.inference_mode()
    def _capture(self, n: int) -> None:
        """Warm up (Triton compiles outside the capture), then capture the size-`n` forward."""
        if self.before_capture is not None:
            self.before_capture()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(n)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            hidden = self._forward(n)
        self._pool = graph.pool()
        self.graphs[n] = (graph, hidden)
