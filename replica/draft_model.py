"""Speculative decoding's draft model: a small model of the target's vocabulary proposes drafts.

Before a step, every speculating request runs through the draft model: first the tokens its
draft KV lacks (a new request's whole context; afterwards the token the target added last and
any drafts it rejected), then one token at a time until it has proposed its k drafts, all the
requests of the step batched into each of those k forward passes, planned together and chained
on the device (one wait for the device a step, not k). Drafts are the draft model's
argmax: a proposal fixed by the context, so the target verifies it by the same rule as an n-gram
draft (`sampler.verify_drafts`: greedy requests keep the target's argmax, sampled ones its
distribution), and no draft-side probabilities or random streams need to travel.

The draft has its own paged KV pool with as many blocks as the target's (sized together with it)
and its own block lists: its KV runs k - 1 positions ahead of what the target has allocated.
A request's draft KV stays valid for the tokens the target accepted, so only what it rejected
and the token after is computed again. A request that leaves the device (finished,
preempted, migrated) gives its draft blocks back with its row (`ModelRunner.remove_request`);
one that finds the pool full proposes nothing that step.

`--speculative-model` names the draft; with the target's own name it shares the target's weights,
and `--speculative-draft-layers N` keeps its first N layers (self-speculation: the target's
early layers and its head draft for it, at no extra weight memory).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from shunter.mathutil import cdiv
from shunter.replica.models.kv_layout import allocate_kv_caches
from shunter.replica.models.llama import LlamaModel
from shunter.replica.models.loader import LoadedModel, load_model
from shunter.replica.attention_metadata import AttentionMetadata
from shunter.replica.packing import Batch, Chunk, pack
from shunter.replica.request import Request


def first_layers(loaded: LoadedModel, num_layers: int) -> LoadedModel:
    """The model cut after its first `num_layers` layers, sharing every weight with it."""
    model = loaded.model
    if not 1 <= num_layers <= model.config.num_layers:
        raise ValueError(f"speculative_draft_layers must be in 1..{model.config.num_layers} "
                         f"(the layers of {loaded.name}), got {num_layers}")
    config = dataclasses.replace(model.config, num_layers=num_layers)
    with torch.device("meta"):
        draft = LlamaModel(config)
    draft.model.embed_tokens, draft.model.norm = model.model.embed_tokens, model.model.norm
    draft.model.layers = nn.ModuleList(model.model.layers[:num_layers])
    draft.lm_head, draft.inv_freq = model.lm_head, model.inv_freq
    return LoadedModel(draft.eval(), config, loaded.tokenizer, f"{loaded.name}[:{num_layers} layers]")


def load_draft(name: str, num_layers: int | None, target: LoadedModel) -> LoadedModel:
    """The draft model `name` on the target's device and dtype: the target itself (its weights
    shared) when `name` is the target's, cut to its first `num_layers` layers if given."""
    if name == target.name:
        draft = target
    else:
        first = next(target.model.parameters())
        draft = load_model(name, device=first.device, dtype=first.dtype)
        check_vocabulary(target, draft)
    return first_layers(draft, num_layers) if num_layers is not None else draft


def check_vocabulary(target: LoadedModel, draft: LoadedModel) -> None:
    """A draft proposes token ids: they must mean the same tokens to the target."""
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"speculative_model: {draft.name} has a vocabulary of {draft.config.vocab_size} tokens, "
                         f"{target.name} one of {target.config.vocab_size}: a draft must share the model's vocabulary")
    if (target.tokenizer is not None and draft.tokenizer is not None
            and draft.tokenizer.get_vocab() != target.tokenizer.get_vocab()):
        raise ValueError(f"speculative_model: {draft.name}'s tokenizer maps tokens to other ids than "
                         f"{target.name}'s: a draft must share the model's vocabulary")


@dataclass
class _DraftKV:
    """Where one request's draft KV lives and what it holds."""

    blocks: list[int] = field(default_factory=list)
    known: int = 0  # positions < known hold KV of the request's own tokens
    ahead: list[int] = field(default_factory=list)  # drafts whose KV follows, at known, known + 1, ...

    def valid(self, tokens: list[int]) -> int:
        """How many leading positions of `tokens` the KV holds (drafts the target kept count)."""
        n = min(self.known, len(tokens))
        for draft in self.ahead:
            if n >= len(tokens) or tokens[n] != draft:
                break
            n += 1
        return n


class DraftModel:
    """Proposes greedy drafts for a batch of requests from a model and a KV pool of its own."""

    def __init__(self, loaded: LoadedModel, num_blocks: int, block_size: int) -> None:
        self.model, self.config, self.name = loaded.model, loaded.config, loaded.name
        first = next(self.model.parameters())
        self.device = first.device
        self.block_size = block_size
        self.kv_caches = allocate_kv_caches(self.config, num_blocks, block_size, first.dtype, self.device)
        self._free = list(range(num_blocks - 1, -1, -1))
        self._kv: dict[str, _DraftKV] = {}

    @property
    def num_blocks_in_use(self) -> int:
        return sum(len(s.blocks) for s in self._kv.values())

    def release(self, request_id: str) -> None:
        """The request left the device (finished, preempted, migrated): give its blocks back."""
        kv = self._kv.pop(request_id, None)
        if kv is not None:
            self._free.extend(kv.blocks)

    @torch.inference_mode()
    def propose(self, wanted: list[tuple[Request, int]]) -> list[list[int]]:
        """Up to `k` drafts for each (request, k); [] for a request the pool has no room for.

        The k passes are planned on the host before the first runs (every position and slot is
        known; only the tokens are not) and chained on the device, each pass's argmax the next
        one's input: the host waits for the device once, for all the drafts."""
        first: list[Chunk] = []
        rows: list[tuple[int, int]] = []  # (index in wanted, drafts it proposes)
        for i, (req, k) in enumerate(wanted):
            tokens = req.prompt_token_ids + req.output_token_ids
            kv = self._kv.setdefault(req.request_id, _DraftKV())
            if not self._reserve(kv, len(tokens) + k - 1):
                self.release(req.request_id)
                continue
            start = min(kv.valid(tokens), len(tokens) - 1)
            first.append(Chunk(tokens[start:], start, kv.blocks, True))
            rows.append((i, k))
        drafts: list[list[int]] = [[] for _ in wanted]
        if not rows:
            return drafts
        passes = self._plan(first, [k for _, k in rows])
        samples, previous = [], None
        for batch, keep in passes:
            if previous is not None:
                batch.input_ids = previous[keep]
            hidden = self.model(batch.input_ids, batch.positions, self.kv_caches, batch.attn)
            previous = self.model.compute_logits(hidden[batch.logits_indices]).argmax(-1)
            samples.append(previous)
        tokens = torch.cat(samples).tolist()  # pass by pass, each pass's live rows in order
        at = 0
        for step in range(len(passes)):
            for i, k in rows:
                if k > step:
                    drafts[i].append(tokens[at])
                    at += 1
        for (i, _), c in zip(rows, first):
            kv = self._kv[wanted[i][0].request_id]
            kv.known, kv.ahead = c.start + len(c.token_ids), drafts[i][:-1]  # the last draft was never fed back
        return drafts

    def _plan(self, first: list[Chunk], ks: list[int]) -> list[tuple[Batch, torch.Tensor | None]]:
        """Every pass's batch on the device, each with the rows of the pass before that go on
        (None for the first pass, whose tokens are known)."""
        passes, chunks, live = [], first, list(range(len(first)))
        for step in range(max(ks)):
            keep = None if step == 0 else torch.tensor([j for j, r in enumerate(live) if ks[r] > step])
            if step:
                live = [r for r in live if ks[r] > step]
                chunks = [Chunk([0], c.start + len(c.token_ids), c.block_ids, True)
                          for c in (chunks[j] for j in keep.tolist())]  # the token comes from the device
            batch = _to(pack(chunks, self.block_size), self.device)
            passes.append((batch, None if keep is None else keep.to(self.device)))
        return passes

    def _reserve(self, kv: _DraftKV, num_positions: int) -> bool:
        need = cdiv(num_positions, self.block_size) - len(kv.blocks)
        if need > len(self._free):
            return False
        for _ in range(need):
            kv.blocks.append(self._free.pop())
        return True


def _to(batch: Batch, device: torch.device) -> Batch:
    """The batch on `device` without waiting for the device (a copy from pageable memory is staged)."""
    if device.type == "cpu":
        return batch
    move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    attn = batch.attn
    return Batch(move(batch.input_ids), move(batch.positions), AttentionMetadata(
        move(attn.slot_mapping), move(attn.block_tables), move(attn.cu_seqlens_q), move(attn.context_lens),
        attn.max_query_len), move(batch.logits_indices))
