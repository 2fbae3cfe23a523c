"""`shunter bench kernels`: achieved memory bandwidth of the Triton paged decode kernel (GPU only).

Decode attention is memory bound: every step reads each sequence's K and V once. The kernel's
achieved bandwidth (bytes of K, V and Q read / time) is compared with what the device reaches on
a large device-to-device copy, and with torch SDPA over padded contiguous KV for the same ragged
lengths (the usual non-paged baseline; its bandwidth counts the same useful bytes, so the padding
it also reads shows up as a loss). Default shape: Llama-3-8B (32 q heads, 8 kv heads, head dim
128), bfloat16, block size 16, 64 sequences whose lengths are uniform in [L/2, L] for each L.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shunter.loadtest.bench_cli import run_bench
from shunter.loadtest.roofline import measure_bandwidth

RESULTS = Path(__file__).resolve().parent / "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-seqs", type=int, default=64)
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192],
                        help="max context length L of each point (lengths uniform in [L/2, L])")
    parser.add_argument("--num-q-heads", type=int, default=32)
    parser.add_argument("--num-kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: loadtest/results/bench_kernels.json)")


def _time_ms(fn, iters: int) -> float:
    """Median of `iters` CUDA-event timings after warm-up."""
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _decode_point(args: argparse.Namespace, max_len: int, gen) -> dict:
    import torch
    import torch.nn.functional as F

    from shunter import kernels

    S, Hq, Hkv, D, page = args.num_seqs, args.num_q_heads, args.num_kv_heads, args.head_dim, args.block_size
    lens = torch.randint(max_len // 2, max_len + 1, (S,), generator=gen)
    blocks = (lens + page - 1) // page
    width = int(blocks.max())
    num_blocks = int(blocks.sum())
    k_cache = torch.randn(num_blocks, page, Hkv, D, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    perm = torch.randperm(num_blocks, generator=gen)
    tables = torch.zeros(S, width, dtype=torch.int32)
    used = 0
    for s, n in enumerate(blocks.tolist()):
        tables[s, :n] = perm[used:used + n]
        used += n
    tables, ctx = tables.cuda(), lens.to("cuda", torch.int32)
    q = torch.randn(S, Hq, D, device="cuda", dtype=torch.bfloat16)
    ops = kernels.triton_kernels(q)
    if ops is None:
        raise RuntimeError("Triton is not installed: nothing to benchmark")
    decode = ops["triton_decode"]
    paged_ms = _time_ms(lambda: decode.paged_attention_decode(q, k_cache, v_cache, tables, ctx), args.iters)
    bytes_read = int(lens.sum()) * Hkv * D * 2 * 2 + q.numel() * 2  # K and V, bf16, plus Q

    # Non-paged baseline: KV already contiguous and padded to the longest sequence.
    from shunter.kernels.reference import _gather_kv

    L = int(lens.max())
    k_pad = _gather_kv(k_cache, tables, L).transpose(1, 2).contiguous()  # [S, Hkv, L, D]
    v_pad = _gather_kv(v_cache, tables, L).transpose(1, 2).contiguous()
    mask = (torch.arange(L, device="cuda")[None, :] < ctx[:, None])[:, None, None, :]  # [S, 1, 1, L]
    q4 = q[:, :, None, :]  # [S, Hq, 1, D]

    def sdpa():
        return F.scaled_dot_product_attention(q4, k_pad, v_pad, attn_mask=mask, enable_gqa=True)

    sdpa_ms = _time_ms(sdpa, args.iters)
    ref = sdpa()[:, :, 0].float()
    err = (decode.paged_attention_decode(q, k_cache, v_cache, tables, ctx).float() - ref).abs().max().item()
    splits = decode.choose_num_splits(S, Hkv, width * page, decode._tile_n(D), decode._num_sms(q.device))
    return {
        "max_context": max_len, "mean_context": float(lens.float().mean()), "num_splits": splits,
        "bytes_read": bytes_read, "triton_ms": paged_ms, "triton_gbs": bytes_read / paged_ms / 1e6,
        "sdpa_padded_ms": sdpa_ms, "sdpa_padded_gbs": bytes_read / sdpa_ms / 1e6, "max_abs_diff_vs_sdpa": err,
    }


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["points"]
    xs = [p["max_context"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(xs, [p["triton_gbs"] for p in points], "o-", label="Triton paged decode (split-K)")
    ax.plot(xs, [p["sdpa_padded_gbs"] for p in points], "s--", label="torch SDPA, padded contiguous KV")
    ax.axhline(result["copy_gbs"], color="gray", linestyle=":", label="device-to-device copy")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("max context L (lengths uniform in [L/2, L])")
    ax.set_ylabel("achieved GB/s (useful K, V, Q bytes)")
    shape = result["shape"]
    ax.set_title(f"decode, {shape['num_seqs']} seqs, {shape['num_q_heads']}q/{shape['num_kv_heads']}kv heads, "
                 f"D={shape['head_dim']}, bf16\n{result['gpu']}", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        print("bench kernels needs a CUDA GPU (the Triton kernels are measured on the device); none found.",
              file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(args.seed)
    copy_gbs = measure_bandwidth("cuda") / 1e9
    points = []
    for max_len in args.contexts:
        point = _decode_point(args, max_len, gen)
        points.append(point)
        print(f"L={max_len:5d}  triton {point['triton_gbs']:7.1f} GB/s ({point['triton_gbs'] / copy_gbs:5.1%} of copy)"
              f"  sdpa padded {point['sdpa_padded_gbs']:7.1f} GB/s  splits {point['num_splits']}")
        torch.cuda.empty_cache()
    result = {
        "command": args._invocation,
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "shape": {"num_seqs": args.num_seqs, "num_q_heads": args.num_q_heads, "num_kv_heads": args.num_kv_heads,
                  "head_dim": args.head_dim, "block_size": args.block_size, "dtype": "bfloat16"},
        "copy_gbs": copy_gbs,
        "points": points,
    }
    out = args.out or RESULTS / "bench_kernels.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, out.with_suffix(".png"))
    print(f"copy bandwidth {copy_gbs:.1f} GB/s; wrote {out} and {out.with_suffix('.png')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_bench("kernels", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
