"""The engine benchmark's roofline arithmetic and workload, and a run cut off midway (its whole
run at toy size is scripts/gpu-check.sh's smoke: tests/scripts/test_gpu_check.py)."""
from __future__ import annotations

import json

from shunter.loadtest import bench_engine
from shunter.loadtest.roofline import ChunkShape, ModelCost, bound_seconds
from shunter.replica.models.config import ModelConfig

TOY = ModelConfig(vocab_size=10, hidden_size=4, intermediate_size=8, num_layers=1, num_heads=2, num_kv_heads=1,
                  head_dim=2)


def test_costs_of_one_decode_step_by_hand():
    cost = ModelCost.of(TOY, dtype_bytes=2)
    # q, o: 4x4 each; k, v: 4x2 each -> 48; gate, up, down: 3 x 4x8 -> 96; lm_head 4x10.
    assert (cost.layer_params, cost.head_params) == (144, 40)
    decode = [ChunkShape(start=3, num_new=1, samples=True)]
    # matmuls 2*144 + logits 2*40 + attention 4 flops x 2 heads x dim 2 per key, 4 keys.
    assert cost.step_flops(decode) == 288 + 80 + 16 * 4
    # all weights once + K and V (1 kv head x dim 2 x 2 bytes each) of 4 tokens.
    assert cost.step_bytes(decode) == 368 + 8 * 4
    assert cost.step_seconds(decode, peak_flops=432, bandwidth=800) == 1.0  # compute bound here
    assert cost.step_seconds(decode, peak_flops=4320, bandwidth=40) == 10.0  # memory bound here


def test_a_prefill_chunk_attends_causally_and_empty_steps_cost_nothing():
    cost = ModelCost.of(TOY, dtype_bytes=4)
    chunk = ChunkShape(start=2, num_new=3, samples=False)  # queries at 2, 3, 4 see 3, 4, 5 keys
    assert cost.step_flops([chunk]) == 2 * 144 * 3 + 16 * (3 + 4 + 5)
    assert bound_seconds(cost, [[], [chunk]], 1.0, 1e30) == cost.step_flops([chunk])


def test_lengths_are_lognormal_around_the_medians_and_capped():
    work = bench_engine.lognormal_workload(2000, 1000, 0, input_median=200, output_median=250, sigma=0.8, cap=2048)
    prompts = sorted(len(p) for p in work.prompts)
    outs = sorted(work.output_lens)
    assert 180 < prompts[1000] < 220 and 225 < outs[1000] < 275
    assert max(prompts) <= 2048 and max(outs) <= 2048 and min(prompts) >= 1


TOY_ARGS = ["--model", "random:tiny", "--device", "cpu", "--num-requests", "8", "--input-median", "12",
            "--output-median", "6", "--cap", "40", "--static-requests", "4", "--hf-batch-size", "2",
            "--max-num-seqs", "4", "--max-num-batched-tokens", "64"]


def test_a_bench_cut_off_mid_run_leaves_the_phases_it_finished(tmp_path, monkeypatch):
    """The GPU check kills a bench at its step's timeout: Shunter's and the roofline's numbers,
    measured first, must already be on disk when a baseline never returns."""
    def cut_off(*args, **kwargs):
        raise KeyboardInterrupt  # stands for the timeout's kill

    monkeypatch.setattr(bench_engine, "run_hf_static", cut_off)
    out = tmp_path / "engine.json"
    try:
        bench_engine.main([*TOY_ARGS, "--out", str(out)])
    except KeyboardInterrupt:
        pass
    result = json.loads(out.read_text())
    assert set(result["output_tokens_per_s"]) == {"shunter", "roofline"}
    assert 0 < result["ratios"]["shunter_over_roofline"] < 1
