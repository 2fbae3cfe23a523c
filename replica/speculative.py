"""Speculative decoding: propose drafts, verify them in one forward pass, accept.

Two proposers. "ngram" (prompt lookup): every request that is decoding looks for the last n
tokens of its context earlier in that context (n from `ngram_max` down to 1) and, where they
occur, proposes the tokens that followed them there: an edit or a summary of a given text
repeats long spans of it. "draft": a small model of the same vocabulary proposes its greedy
continuation (`replica/draft_model.py`).
The drafts are appended to the request's output for the scheduler's sake, so the step computes
the request's last token and its k drafts as one chunk of k + 1 tokens (the KV slots, the token
budget and the blocks come as for any chunk), and the model's logits at every position of the
chunk judge the drafts (`sampler.verify_drafts`). A greedy request accepts a draft that is the
argmax there; a sampled one accepts it with the probability its distribution gives it and
otherwise draws from the rest (speculative sampling), so its tokens follow the same distribution
as without drafts. The first rejected draft is replaced, or, all accepted, the chunk's last
position adds a token: a step gains between 1 and k + 1 tokens, and greedy output is the same
token for token as without drafts.
Rejected drafts leave KV in their slots that nobody reads: the request's computed count stops
before them, and the next step writes over them.

Requests asking for log-probabilities or following a grammar decode one token a step; the others
speculate while at least two tokens remain before `max_tokens` and the context's end, so a draft
never decides a length stop. Speculation steps
synchronously on packed inputs: the next drafts need the tokens just accepted.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Protocol

from shunter.cli_args import int_at_least
from shunter.replica.request import Request

SPECULATIVE_METHODS = ("ngram", "draft")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The speculative decoding flags, as `shunter serve` and `shunter generate` take them."""
    parser.add_argument("--speculative", choices=SPECULATIVE_METHODS, default=None,
                        help="speculative decoding: ngram proposes drafts from the context itself (prompt lookup), "
                             "draft from --speculative-model; verified in one pass (greedy: token for token the "
                             "same output); steps synchronously")
    parser.add_argument("--speculative-model", default=None, metavar="MODEL",
                        help="the draft model (any --model source of the same vocabulary); implies --speculative "
                             "draft. The served model's own name shares its weights")
    parser.add_argument("--speculative-draft-layers", type=int_at_least(1), default=None, metavar="N",
                        help="with --speculative-model: keep only its first N layers (with the served model's "
                             "name: self-speculation, its early layers draft for it)")
    parser.add_argument("--num-speculative-tokens", type=int_at_least(1), default=4, metavar="K",
                        help="with --speculative: drafts proposed per request per step")


def engine_settings(args: argparse.Namespace) -> dict:
    """The EngineConfig fields of these flags."""
    return {"speculative": args.speculative, "speculative_model": args.speculative_model,
            "speculative_draft_layers": args.speculative_draft_layers,
            "num_speculative_tokens": args.num_speculative_tokens}


def check_draft_model(args: argparse.Namespace, convert: bool = True) -> None:
    """`--speculative-model` before any replica loads it: a model source whose vocabulary is the
    served model's (a GGUF converted now, as `--model` is; with `convert` False one not converted
    yet is left for later). ValueError naming the flag."""
    if args.speculative_model is None:
        if args.speculative == "draft":
            raise ValueError("--speculative: draft needs --speculative-model")
        return
    if args.speculative == "ngram":
        raise ValueError("--speculative-model: --speculative ngram takes no draft model")
    if args.speculative_model == args.model:
        return
    from shunter.replica.models.loader import model_vocab_size, prepare_model
    from shunter.replica.models.sources import model_source

    try:
        model_source(args.speculative_model)
        if convert:
            prepare_model(args.speculative_model)
        draft, target = model_vocab_size(args.speculative_model, convert), model_vocab_size(args.model, convert)
    except ValueError as e:
        raise ValueError(f"--speculative-model: {e}") from None
    if draft is not None and target is not None and draft != target:
        raise ValueError(f"--speculative-model: {args.speculative_model} has a vocabulary of {draft} tokens, "
                         f"{args.model} one of {target}: a draft must share the model's vocabulary")


def propose_ngram(tokens: list[int], k: int, ngram_max: int) -> list[int]:
    """Up to `k` tokens that followed the latest earlier occurrence of the context's last n tokens
    (the longest n <= `ngram_max` that occurs); [] if none does."""
    size = len(tokens)
    for n in range(min(ngram_max, size - 1), 0, -1):
        suffix = tokens[size - n:]
        last = suffix[-1]
        # Latest match first: scan start positions of a candidate suffix from the end.
        for end in range(size - 2, n - 2, -1):
            if tokens[end] == last and tokens[end - n + 1:end + 1] == suffix:
                return tokens[end + 1:end + 1 + k]
    return []


@dataclass
class SpeculationStats:
    steps: int = 0  # request-steps that verified drafts
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class Proposer(Protocol):
    def propose(self, wanted: list[tuple[Request, int]]) -> list[list[int]]:
        """Up to k drafts for each (request, k)."""


@dataclass
class NgramProposer:
    ngram_max: int

    def propose(self, wanted: list[tuple[Request, int]]) -> list[list[int]]:
        return [propose_ngram(req.prompt_token_ids + req.output_token_ids, k, self.ngram_max) for req, k in wanted]


@dataclass
class Speculator:
    num_tokens: int  # k: drafts proposed per request per step
    max_model_len: int
    proposer: Proposer
    stats: SpeculationStats = field(default_factory=SpeculationStats)
    _drafted: dict[str, tuple[Request, int]] = field(default_factory=dict)  # drafts in a request's output now

    def propose(self, running: list[Request]) -> None:
        """Append drafts to every eligible decoding request (before the schedule)."""
        wanted = []
        for req in running:
            params = req.params
            if params.logprobs is not None or req.grammar is not None or req.num_computed_tokens != req.num_tokens - 1:
                continue
            room = min(self.num_tokens, params.max_tokens - len(req.output_token_ids) - 2,
                       self.max_model_len - req.num_tokens - 2)
            if room >= 1:
                wanted.append((req, room))
        for (req, _), drafts in zip(wanted, self.proposer.propose(wanted) if wanted else []):
            if drafts:
                req.output_token_ids.extend(drafts)
                self._drafted[req.request_id] = (req, len(drafts))

    def fit_to(self, scheduled: dict[str, int]) -> dict[str, int]:
        """After the schedule: take back the drafts the step will not compute (a request not
        scheduled, preempted or ended, or given fewer tokens than its chunk); `scheduled` maps
        request ids to tokens scheduled. Returns the drafts each request verifies this step."""
        verifying = {}
        for request_id, (req, n) in self._drafted.items():
            keep = min(n, scheduled.get(request_id, 1) - 1)
            del req.output_token_ids[len(req.output_token_ids) - (n - keep):]
            if keep:
                verifying[request_id] = keep
        self._drafted.clear()
        return verifying

    def accept(self, drafts: list[int], verdicts: list[tuple[bool, int]], bonus: int) -> list[int]:
        """The tokens a verified chunk yields: the drafts up to the first rejected one
        (`verdicts`: per draft, accepted and the token to emit instead, `sampler.verify_drafts`),
        then that one's replacement, or, all accepted, the token sampled after the last (`bonus`)."""
        j = 0
        while j < len(drafts) and verdicts[j][0]:
            j += 1
        self.stats.steps += 1
        self.stats.drafted += len(drafts)
        self.stats.accepted += j
        return drafts[:j] + [verdicts[j][1] if j < len(drafts) else bonus]
