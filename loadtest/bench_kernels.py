"""`shunter bench kernels`: achieved memory bandwidth of the Triton paged decode kernel (GPU).

Decode attention is memory bound: every step reads each sequence's K and V once. The kernel's
achieved bandwidth (bytes of K, V and Q read / time) is compared with what the device reaches on
a large device-to-device copy, and with torch SDPA over padded contiguous KV for the same ragged
lengths (the usual non-paged baseline, shaped for its fast backends; see `sdpa_baseline.py`; its
bandwidth counts the same useful bytes, so the padding it also reads shows up as a loss). Each
point is also timed with the block table as wide as CUDA graphs make it (`--graph-table-tokens`).
Times are per call over many calls captured in one CUDA graph (`kernel_timing.py`).

Default shape: Llama-3-8B (32 q heads, 8 kv heads, head dim 128), bfloat16, block size 16; batches
of 1, 8 and 64 sequences whose lengths are uniform in [L/2, L] for each L. `--device cpu` runs the
same steps in Triton's interpreter at toy sizes (`TRITON_INTERPRET=1`): a smoke test of the
harness, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shunter.loadtest.bench_cli import run_bench
from shunter.loadtest.kernel_timing import time_per_call_ms
from shunter.loadtest.roofline import is_cuda, measure_bandwidth

RESULTS = Path(__file__).resolve().parent / "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-seqs", type=int, nargs="+", default=[1, 8, 64], help="batch sizes")
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192],
                        help="max context length L of each point (lengths uniform in [L/2, L])")
    parser.add_argument("--num-q-heads", type=int, default=32)
    parser.add_argument("--num-kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--graph-table-tokens", type=int, default=131072,
                        help="also time each point with the block table this many tokens wide, as the decode "
                             "graphs' static table (max_model_len); 0 skips it")
    parser.add_argument("--samples", type=int, default=20, help="timed samples per point (the median is kept)")
    parser.add_argument("--calls", type=int, default=20, help="back-to-back calls per sample")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu under TRITON_INTERPRET=1 (smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: loadtest/results/bench_kernels.json)")


def _paged_batch(args: argparse.Namespace, num_seqs: int, max_len: int, gen, dtype):
    """Random K/V in shuffled blocks, the block table, the lengths and the queries of one point."""
    import torch

    page, Hkv, D = args.block_size, args.num_kv_heads, args.head_dim
    lens = torch.randint(max(max_len // 2, 1), max_len + 1, (num_seqs,), generator=gen)
    blocks = (lens + page - 1) // page
    num_blocks = int(blocks.sum())
    # Made on the device (seeded by torch.manual_seed in run): a CPU randn of GBs would take seconds.
    k_cache = torch.randn(num_blocks, page, Hkv, D, device=args.device, dtype=dtype)
    v_cache = torch.randn(num_blocks, page, Hkv, D, device=args.device, dtype=dtype)
    perm = torch.randperm(num_blocks, generator=gen)
    tables = torch.zeros(num_seqs, int(blocks.max()), dtype=torch.int32)
    used = 0
    for s, n in enumerate(blocks.tolist()):
        tables[s, :n] = perm[used:used + n]
        used += n
    q = torch.randn(num_seqs, args.num_q_heads, D, device=args.device, dtype=dtype)
    return q, k_cache, v_cache, tables.to(args.device), lens.to(args.device, torch.int32), lens


def _decode_point(args: argparse.Namespace, num_seqs: int, max_len: int, gen, dtype) -> dict:
    import torch

    from shunter.kernels import ops as kernels
    from shunter.kernels.reference import _gather_kv
    from shunter.loadtest.sdpa_baseline import pick_backend, sdpa_decode, with_backend

    q, k_cache, v_cache, tables, ctx, lens = _paged_batch(args, num_seqs, max_len, gen, dtype)
    Hkv, D, page = args.num_kv_heads, args.head_dim, args.block_size
    decode = kernels.triton_kernels(q)["triton_decode"]
    timing = dict(device=args.device, samples=args.samples, calls=args.calls)
    paged_ms, method = time_per_call_ms(lambda: decode.paged_attention_decode(q, k_cache, v_cache, tables, ctx), **timing)
    bytes_read = int(lens.sum()) * Hkv * D * 2 * q.element_size() + q.numel() * q.element_size()
    splits = decode.choose_num_splits(num_seqs, Hkv, tables.shape[1] * page, decode._tile_n(D), decode._num_sms(q.device))
    point = {
        "num_seqs": num_seqs, "max_context": max_len, "mean_context": float(lens.float().mean()),
        "num_splits": splits, "bytes_read": bytes_read, "timing": method,
        "triton_ms": paged_ms, "triton_gbs": bytes_read / paged_ms / 1e6,
    }
    if args.graph_table_tokens:
        width = -(-args.graph_table_tokens // page)
        wide = torch.zeros(num_seqs, max(width, tables.shape[1]), dtype=torch.int32, device=args.device)
        wide[:, :tables.shape[1]] = tables
        wide_ms, _ = time_per_call_ms(lambda: decode.paged_attention_decode(q, k_cache, v_cache, wide, ctx), **timing)
        wide_splits = decode.choose_num_splits(num_seqs, Hkv, wide.shape[1] * page, decode._tile_n(D),
                                               decode._num_sms(q.device))
        point.update(graph_table_splits=wide_splits, graph_table_ms=wide_ms,
                     graph_table_gbs=bytes_read / wide_ms / 1e6,
                     graph_table_active_splits_mean=sum(decode.active_splits(n, wide_splits, decode._tile_n(D))
                                                        for n in lens.tolist()) / num_seqs)

    L = int(lens.max())
    k_pad = _gather_kv(k_cache, tables, L).transpose(1, 2).contiguous()  # [S, Hkv, L, D]
    v_pad = _gather_kv(v_cache, tables, L).transpose(1, 2).contiguous()
    backend = pick_backend(lambda: sdpa_decode(q, k_pad, v_pad, ctx))
    sdpa = with_backend(backend, lambda: sdpa_decode(q, k_pad, v_pad, ctx))
    sdpa_ms, _ = time_per_call_ms(sdpa, **timing)
    err = (decode.paged_attention_decode(q, k_cache, v_cache, tables, ctx).float() - sdpa().float()).abs().max().item()
    point.update(sdpa_backend=backend, sdpa_padded_ms=sdpa_ms, sdpa_padded_gbs=bytes_read / sdpa_ms / 1e6,
                 max_abs_diff_vs_sdpa=err)
    return point


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = sorted({p["max_context"] for p in result["points"]})
    for n in sorted({p["num_seqs"] for p in result["points"]}):
        points = [p for p in result["points"] if p["num_seqs"] == n]
        line = ax.plot([p["max_context"] for p in points], [p["triton_gbs"] for p in points], "o-",
                       label=f"Triton paged decode, {n} seqs")
        ax.plot([p["max_context"] for p in points], [p["sdpa_padded_gbs"] for p in points], "s--",
                color=line[0].get_color(), alpha=0.6, label=f"SDPA padded ({points[0]['sdpa_backend'].lower()}), {n} seqs")
    ax.axhline(result["copy_gbs"], color="gray", linestyle=":", label="device-to-device copy")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("max context L (lengths uniform in [L/2, L])")
    ax.set_ylabel("achieved GB/s (useful K, V, Q bytes)")
    shape = result["shape"]
    ax.set_title(f"decode, {shape['num_q_heads']}q/{shape['num_kv_heads']}kv heads, "
                 f"D={shape['head_dim']}, {shape['dtype']}\n{result['gpu']}", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import torch

    if is_cuda(args.device) and not torch.cuda.is_available():
        print("bench kernels needs a CUDA GPU (or --device cpu with TRITON_INTERPRET=1 for a smoke run); none found.",
              file=sys.stderr)
        return 2
    if not is_cuda(args.device) and not os.environ.get("TRITON_INTERPRET"):
        print("--device cpu runs the kernels in Triton's interpreter: set TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    from shunter.kernels import ops as kernels

    if kernels.triton_kernels(torch.empty(0, device=args.device)) is None:
        print("Triton is not installed: nothing to benchmark", file=sys.stderr)
        return 2
    dtype = torch.bfloat16
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    copy_gbs = measure_bandwidth(args.device) / 1e9
    points = []
    for num_seqs in args.num_seqs:
        for max_len in args.contexts:
            point = _decode_point(args, num_seqs, max_len, gen, dtype)
            points.append(point)
            wide = f"  graph-wide table {point['graph_table_gbs']:7.1f} GB/s" if "graph_table_gbs" in point else ""
            print(f"S={num_seqs:3d} L={max_len:5d}  triton {point['triton_gbs']:7.1f} GB/s "
                  f"({point['triton_gbs'] / copy_gbs:5.1%} of copy, splits {point['num_splits']}){wide}"
                  f"  sdpa padded ({point['sdpa_backend']}) {point['sdpa_padded_gbs']:7.1f} GB/s", flush=True)
            if is_cuda(args.device):
                torch.cuda.empty_cache()
    result = {
        "command": args._invocation,
        "gpu": torch.cuda.get_device_name(args.device) if is_cuda(args.device) else "cpu (Triton interpreter)",
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "shape": {"num_q_heads": args.num_q_heads, "num_kv_heads": args.num_kv_heads, "head_dim": args.head_dim,
                  "block_size": args.block_size, "dtype": "bfloat16"},
        "timing": {"samples": args.samples, "calls_per_sample": args.calls},
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
