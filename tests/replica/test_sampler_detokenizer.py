"""Sampler (greedy, top-k, top-p, seeds; all on the device, rows independent) and incremental
detokenization with stop strings."""
from __future__ import annotations

import torch

from shunter import SamplingParams
from shunter.replica.detokenizer import IncrementalDetokenizer
from shunter.replica.sampler import sample, uniform
from shunter.replica.step_inputs import SamplingInputs


def _sample(logits: torch.Tensor, params: list[SamplingParams], seeds: list[int] | None = None,
            draws: list[int] | None = None) -> list[int]:
    n = len(params)
    inputs = SamplingInputs.of(params, seeds or [0] * n, draws or [0] * n, logits.shape[-1])
    return sample(logits, inputs).tokens.tolist()


def test_greedy_takes_the_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])
    assert _sample(logits, [SamplingParams(temperature=0)] * 2) == [1, 0]


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 50)
    want = logits.argmax(-1).tolist()
    assert _sample(logits, [SamplingParams(temperature=1.0, top_k=1)] * 4, seeds=[0, 1, 2, 3]) == want
    assert _sample(logits, [SamplingParams(temperature=1.0, top_p=1e-6)] * 4, seeds=[0, 1, 2, 3]) == want


def test_seeded_sampling_is_reproducible_and_stays_in_top_k():
    logits = torch.randn(1, 100)
    p = SamplingParams(temperature=1.5, top_k=5, seed=3)
    draws = [_sample(logits, [p], seeds=[3], draws=[7])[0] for _ in range(3)]
    assert len(set(draws)) == 1
    top5 = set(torch.topk(logits[0], 5).indices.tolist())
    assert all(_sample(logits, [p], seeds=[0], draws=[k])[0] in top5 for k in range(50))


def test_a_seeded_row_does_not_depend_on_its_batch_mates():
    """Row 0 alone, then among rows of other parameters and seeds, in another position."""
    torch.manual_seed(0)
    logits = torch.randn(5, 300)
    mine = SamplingParams(temperature=0.8, top_p=0.9)
    others = [SamplingParams(temperature=0), SamplingParams(temperature=1.3, top_k=7), SamplingParams(temperature=1.0),
              SamplingParams(temperature=0.5, top_p=0.5)]
    for draw in range(20):
        alone = _sample(logits[:1], [mine], seeds=[42], draws=[draw])[0]
        order = [3, 1, 0, 2, 4]  # row 0 lands third
        mixed = _sample(logits[order], [others[0], others[1], mine, others[2], others[3]],
                        seeds=[1, 2, 42, 3, 4], draws=[5, 6, draw, 7, 8])
        assert mixed[2] == alone


def test_draws_follow_the_filtered_distribution():
    """Many draws of one row: frequencies near softmax(logits / T) over the kept tokens, and a
    token outside top-p never drawn."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    n = 4000
    full = torch.tensor([_sample(logits, [SamplingParams(temperature=1.0)], seeds=[9], draws=[k])[0] for k in range(n)])
    freq = torch.bincount(full, minlength=4).float() / n
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    cut = [_sample(logits, [SamplingParams(temperature=1.0, top_p=0.75)], seeds=[9], draws=[k])[0] for k in range(500)]
    assert set(cut) == {0, 1}  # 0.5 + 0.3 reach 0.75: tokens 2 and 3 are dropped


def test_uniform_is_a_pure_function_of_seed_and_draw_in_the_unit_interval():
    seeds = torch.tensor([0, 1, 2**62, -5] * 256)
    draws = torch.arange(1024)
    u = uniform(seeds, draws)
    assert torch.equal(u, uniform(seeds, draws)) and bool(((u >= 0) & (u < 1)).all())
    assert abs(float(u.mean()) - 0.5) < 0.03 and len(set(u.tolist())) == 1024


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
