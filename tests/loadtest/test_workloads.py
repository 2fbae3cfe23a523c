"""The workload generators: seeded, and faithful to the statistics they state."""
from __future__ import annotations

import statistics

import pytest

from shunter.loadtest import workloads as wl


def test_same_seed_same_stream_other_seed_another():
    assert wl.sharegpt(200, 5.0, seed=3) == wl.sharegpt(200, 5.0, seed=3)
    assert wl.sharegpt(200, 5.0, seed=3) != wl.sharegpt(200, 5.0, seed=4)
    a, b = wl.shared_prefix(5, 1.0, seed=1), wl.shared_prefix(5, 1.0, seed=1)
    assert [r.prompt_tokens(32000) for r in a] == [r.prompt_tokens(32000) for r in b]


def test_sharegpt_matches_the_published_means():
    reqs = wl.sharegpt(20_000, 10.0, seed=0)
    assert statistics.mean(r.prompt_len for r in reqs) == pytest.approx(wl.SHAREGPT_MEAN_INPUT, rel=0.03)
    assert statistics.mean(r.output_len for r in reqs) == pytest.approx(wl.SHAREGPT_MEAN_OUTPUT, rel=0.03)
    lo, hi = wl.SHAREGPT_BOUNDS
    assert all(lo <= r.prompt_len <= hi and lo <= r.output_len <= hi for r in reqs)


@pytest.mark.parametrize("cv", [1.0, 2.0])
def test_arrivals_have_the_asked_rate_and_burstiness(cv):
    times = wl.arrivals(20_000, 4.0, wl.random.Random(0), cv=cv)
    gaps = [b - a for a, b in zip([0.0] + times, times)]
    assert statistics.mean(gaps) == pytest.approx(0.25, rel=0.05)
    assert statistics.pstdev(gaps) / statistics.mean(gaps) == pytest.approx(cv, rel=0.08)
    assert wl.arrivals(3, float("inf"), wl.random.Random(0)) == [0.0, 0.0, 0.0]


def test_shared_prefix_groups_share_exactly_their_system_prompt():
    reqs = wl.shared_prefix(400, 10.0, seed=0, num_groups=4, system_prompt_len=64, question_len=16, output_len=8)
    by_group: dict[int, list[list[int]]] = {}
    for r in reqs:
        assert r.prompt_len == 80 and r.prefix_len == 64 and r.output_len == 8
        by_group.setdefault(r.prefix_id, []).append(r.prompt_tokens(1000))
    assert set(by_group) == {0, 1, 2, 3}
    for prompts in by_group.values():
        assert all(p[:64] == prompts[0][:64] for p in prompts)
        assert len({tuple(p[64:]) for p in prompts}) == len(prompts)  # own questions
    firsts = {tuple(prompts[0][:64]) for prompts in by_group.values()}
    assert len(firsts) == 4
    assert all(10 <= t < 990 for p in by_group[0] for t in p)


def test_hot_prefix_carries_its_share_of_traffic():
    reqs = wl.shared_prefix(20_000, 10.0, seed=0, num_groups=64, hot_fraction=0.5)
    hot = sum(r.tenant == "t0" for r in reqs) / len(reqs)
    assert hot == pytest.approx(0.5 + 0.5 / 64, abs=0.01)


def test_long_mix_and_skewed_output_fractions():
    mix = wl.long_mix(10_000, 10.0, seed=0, long_fraction=0.2)
    longs = [r for r in mix if r.request_id.startswith("long")]
    assert len(longs) / len(mix) == pytest.approx(0.2, abs=0.015)
    assert all(4096 <= r.prompt_len <= 8192 for r in longs)
    skew = wl.skewed_output(10_000, 10.0, seed=0, long_fraction=0.1)
    assert sum(r.output_len >= 1024 for r in skew) / len(skew) == pytest.approx(0.1, abs=0.01)


def test_priority_mix_classes():
    reqs = wl.priority_mix(2000, 4.0, seed=0)
    for r in reqs:
        long = r.request_id.startswith("long")
        assert r.priority == ("batch" if long else "interactive")
        assert (160 <= r.prompt_len <= 256) if long else (8 <= r.prompt_len <= 32)
    assert sum(r.priority == "batch" for r in reqs) / len(reqs) == pytest.approx(0.25, abs=0.03)


def test_trace_round_trip_and_rate_rescaling(tmp_path):
    reqs = wl.sharegpt(50, 2.0, seed=5, tbt_ms=100.0)
    path = tmp_path / "t.jsonl"
    wl.write_trace(path, reqs)
    assert wl.make_workload("trace", None, None, path=path) == reqs
    faster = wl.trace(path, rate=20.0)
    assert (faster[-1].arrival_s - faster[0].arrival_s) == pytest.approx(49 / 20.0)
    assert [r.prompt_len for r in faster] == [r.prompt_len for r in reqs]
    path.write_text('{"request_id": "x", "arrival_s": 0, "prompt_len": 3, "output_len": 2, "colour": 1}\n')
    with pytest.raises(ValueError, match="colour"):
        wl.trace(path)


def test_sampling_params_make_exactly_the_output():
    r = wl.priority_mix(1, 1.0, seed=0, long_fraction=1.0)[0]
    p = r.sampling_params()
    assert (p.max_tokens, p.ignore_eos, p.temperature, p.priority) == (r.output_len, True, 0.0, "batch")
    assert r.sampling_params(max_tokens=3).max_tokens == 3


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="workload must be one of"):
        wl.make_workload("nope", 1, 1.0)
    with pytest.raises(ValueError, match="prefix_len"):
        wl.WorkloadRequest("r", 0.0, 4, 1, prefix_len=5)
    with pytest.raises(ValueError, match="rate"):
        wl.arrivals(1, 0.0, wl.random.Random(0))


def test_multi_turn_conversations_grow_by_question_and_answer():
    reqs = wl.shared_prefix(10, 4.0, seed=2, num_groups=150, system_prompt_len=32, question_len=8, output_len=5,
                            turns=4, think_s=0.5)
    conversations: dict[str, list[wl.WorkloadRequest]] = {}
    for r in reqs:
        conversations.setdefault(r.conversation, []).append(r)
    assert [len(c) for c in conversations.values()] == [4, 4, 2]  # 10 requests: the last conversation is cut
    for turns in conversations.values():
        assert len({r.tenant for r in turns}) == 1 and [r.turn for r in turns] == list(range(len(turns)))
        for k, r in enumerate(turns):
            assert (r.prefix_len, r.history_len, r.prompt_len) == (32, k * 13, 32 + k * 13 + 8)
            assert r.arrival_s == pytest.approx(turns[0].arrival_s + k * 0.5)
    first, second = conversations["c0"][:2]
    with pytest.raises(ValueError, match="needs the earlier turns"):
        second.prompt_tokens(1000)
    p0 = first.prompt_tokens(1000)
    answer = [1, 2, 3, 4, 5]
    p1 = second.prompt_tokens(1000, history=p0[32:] + answer)
    assert p1[: len(p0) + 5] == p0 + answer and len(p1) == len(p0) + 5 + 8


def test_trace_may_carry_the_prompt_itself(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"request_id": "a", "arrival_s": 0.5, "prompt_token_ids": [11, 12, 13], "output_len": 2,'
                    ' "priority": "batch", "ttft_ms": 900, "tbt_ms": 90}\n')
    (r,) = wl.trace(path)
    assert (r.prompt_len, r.prompt_tokens(1000), r.priority, r.ttft_ms, r.tbt_ms) == (3, [11, 12, 13], "batch", 900, 90)
    with pytest.raises(ValueError, match="whole prompt"):
        wl.WorkloadRequest("b", 0.0, 4, 1, prompt_token_ids=(1, 2))
