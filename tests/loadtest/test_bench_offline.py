"""`bench offline` at toy size: `--logprobs` (off and on, alternating on one engine), and the
llama.cpp baseline's loop over a fake `llama_cpp` (the real one is optional and not installed here)."""
from __future__ import annotations

import json
import sys
import types

import pytest

from shunter import cli


def test_logprobs_on_and_off_are_timed_in_one_run(tmp_path):
    out = tmp_path / "offline.json"
    assert cli.main(["bench", "offline", "--model", "random:tiny", "--num-requests", "4", "--prompt-len", "4", "16",
                     "--output-len", "2", "6", "--max-num-seqs", "4", "--max-num-batched-tokens", "64",
                     "--logprobs", "3", "--rounds", "2", "--skip-hf", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    cost = result["logprobs"]
    assert (cost["k"], cost["rounds"], len(cost["off_seconds"]), len(cost["on_seconds"])) == (3, 2, 2, 2)
    useful = result["workload"]["useful_output_tokens"]
    assert cost["on_tokens_per_s"] == useful * 2 / sum(cost["on_seconds"])
    assert cost["throughput_cost"] == 1 - sum(cost["off_seconds"]) / sum(cost["on_seconds"])
    assert cost["cpu_throughput_cost"] == 1 - sum(cost["off_cpu_seconds"]) / sum(cost["on_cpu_seconds"])
    assert len(cost["on_cpu_seconds"]) == 2 and min(cost["off_cpu_seconds"] + cost["on_cpu_seconds"]) > 0
    assert "hf_static" not in result and "ratio" not in result


def test_llama_cpp_is_a_clear_error_where_it_cannot_run(monkeypatch, capsys):
    from shunter.loadtest import llama_cpp_baseline

    monkeypatch.setattr(llama_cpp_baseline, "available", lambda: False)
    with pytest.raises(SystemExit, match="--llama-cpp: llama-cpp-python is not installed"):
        cli.main(["bench", "offline", "--llama-cpp", "--skip-hf"])
    with pytest.raises(SystemExit, match="--llama-cpp: runs the smollm2-135m-instruct GGUF only"):
        cli.main(["bench", "offline", "--llama-cpp", "--model", "random:tiny"])


class _FakeLlama:
    """llama_cpp.Llama's calls the baseline makes: `generate` yields tokens until the caller stops."""

    made: list[_FakeLlama] = []

    def __init__(self, model_path: str, **settings) -> None:
        self.model_path, self.settings, self.prompts, self.resets = model_path, settings, [], 0
        _FakeLlama.made.append(self)

    def reset(self) -> None:
        self.resets += 1

    def generate(self, tokens, **sampling):
        assert sampling["temp"] == 0.0 and sampling["top_k"] == 1 and sampling["repeat_penalty"] == 1.0
        self.prompts.append(list(tokens))
        k = 0
        while True:  # never stops by itself: EOS is the caller's business
            k += 1
            yield tokens[-1] + k


def test_llama_cpp_runs_each_request_in_turn_for_exactly_its_output_length(monkeypatch, tmp_path):
    from shunter.loadtest.llama_cpp_baseline import run_llama_cpp

    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=_FakeLlama))
    prompts, lens = [[5, 6, 7], [9] * 20, [3]], [4, 1, 6]
    result = run_llama_cpp(tmp_path / "m.gguf", prompts, lens, threads=2)
    llm = _FakeLlama.made[-1]
    assert result["token_ids"] == [[8, 9, 10, 11], [10], [4, 5, 6, 7, 8, 9]]
    assert llm.prompts[1:] == prompts  # after the warm-up's, each prompt once, in order
    assert llm.settings["n_threads"] == 2 and llm.settings["n_ctx"] >= 21 + 1
    assert result["seconds"] > 0 and result["threads"] == 2
