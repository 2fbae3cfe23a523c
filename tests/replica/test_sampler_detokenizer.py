"""Sampler (greedy, top-k, top-p, seeds) and incremental detokenization with stop strings."""
from __future__ import annotations

import torch

from shunter import SamplingParams
from shunter.replica.detokenizer import IncrementalDetokenizer
from shunter.replica.sampler import sample


def test_greedy_takes_the_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])
    assert sample(logits, [SamplingParams(temperature=0)] * 2, [None, None]) == [1, 0]


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 50)
    want = logits.argmax(-1).tolist()
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    assert sample(logits, [SamplingParams(temperature=1.0, top_k=1)] * 4, gens) == want
    assert sample(logits, [SamplingParams(temperature=1.0, top_p=1e-6)] * 4, gens) == want


def test_seeded_sampling_is_reproducible_and_stays_in_top_k():
    logits = torch.randn(1, 100)
    p = SamplingParams(temperature=1.5, top_k=5, seed=3)
    draws = [sample(logits, [p], [torch.Generator().manual_seed(3)])[0] for _ in range(3)]
    assert len(set(draws)) == 1
    top5 = set(torch.topk(logits[0], 5).indices.tolist())
    gen = torch.Generator().manual_seed(0)
    assert all(sample(logits, [p], [gen])[0] in top5 for _ in range(50))


class CharTokenizer:
    """Token i is the i-th byte; decoding is UTF-8 with replacement, like a byte-level BPE."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_multibyte_characters_are_never_split():
    detok = IncrementalDetokenizer(CharTokenizer())
    pieces = [detok.add(b) for b in "añ€".encode()]
    assert "".join(pieces) == "añ€"
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_cuts_the_text_even_across_tokens():
    detok = IncrementalDetokenizer(CharTokenizer(), stop=["END"])
    released = "".join(detok.add(b) for b in b"hello EN")
    assert not detok.stopped
    released += detok.add(ord("D"))
    assert detok.stopped and released == "hello " and detok.text == "hello "
    assert detok.add(ord("x")) == ""


def test_held_back_text_is_flushed_when_the_request_ends_otherwise():
    detok = IncrementalDetokenizer(CharTokenizer(), stop=["STOP"])
    released = "".join(detok.add(b) for b in b"abcST")
    assert released + detok.flush() == "abcST"
