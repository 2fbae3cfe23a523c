"""`bench offline --logprobs` at toy size: log-probabilities off and on, alternating on one engine."""
from __future__ import annotations

import json

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
