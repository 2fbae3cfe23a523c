"""Compile every kernel for an H100 (sm_90) ahead of time, without a GPU: `python -m
tests.kernels.sm90_compile` (run by test_compile.py in a fresh process, because Triton 3.9's
interpreter stops working in a process once a kernel was compiled there).

The interpreter skips the GPU backend's checks (dot shapes, layouts, shared memory); this is
where a kernel that would fail only on the GPU machine is caught.
"""
from __future__ import annotations

import json
import os
import sys

import torch

CONFIGS = [("bf16", 128, 4), ("bf16", 80, 1), ("bf16", 256, 8), ("fp32", 64, 2)]  # (dtype, head dim, group)
SHARED_LIMIT = 100 * 1024  # fits GPUs with ~100 KB of shared memory per block, not only H100


def _compile(fn, pointers: dict[str, str], constexprs: dict, num_warps: int = 4) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def arg_type(name: str) -> str:
        if name in pointers:
            return pointers[name]
        return "fp32" if name == "scale_log2" else ("*i32" if name.endswith("_ptr") else "i32")

    signature = {name: arg_type(name) for name in fn.arg_names}
    signature.update({name: "constexpr" for name in constexprs})
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    return {"kernel": fn.__name__, **{k: v for k, v in constexprs.items()}, "shared": compiled.metadata.shared}


def compile_all() -> list[dict]:
    from shunter.kernels import ops as kernels

    ops = kernels.load_triton_kernels(interpret=False)
    common, decode, prefill = ops["triton_common"], ops["triton_decode"], ops["triton_prefill"]
    done = []
    for dtype, head_dim, group in CONFIGS:
        cache_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        block_d = common.pow2(head_dim)
        data = {name: f"*{dtype}" for name in ("q_ptr", "k_ptr", "v_ptr", "out_ptr")}
        data.update(part_o_ptr="*fp32", part_ml_ptr="*fp32")
        for single in (True, False):
            done.append(_compile(decode._decode_split_kernel, data, dict(
                GROUP=group, HEAD_DIM=head_dim, SINGLE=single, PAGE=16, BLOCK_G=max(16, common.pow2(group)),
                BLOCK_D=block_d, BLOCK_N=decode._tile_n(head_dim), DOT_F32=common.dot_in_f32(cache_dtype),
                MIN_TILES=decode.MIN_TILES_PER_SPLIT)))
        done.append(_compile(decode._decode_merge_kernel, data, dict(
            HEAD_DIM=head_dim, BLOCK_SPLITS=decode.MAX_SPLITS, BLOCK_D=block_d, BLOCK_N=decode._tile_n(head_dim),
            MIN_TILES=decode.MIN_TILES_PER_SPLIT), num_warps=4 if block_d <= 128 else 8))
        block_m, block_n, warps = prefill._tiles(head_dim, cache_dtype)
        done.append(_compile(prefill._prefill_kernel, data, dict(
            GROUP=group, HEAD_DIM=head_dim, PAGE=16, BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_N=block_n,
            DOT_F32=common.dot_in_f32(cache_dtype)), num_warps=warps))
    pointers = {name: "*bf16" for name in ("key_ptr", "value_ptr", "k_cache_ptr", "v_cache_ptr")}
    pointers["slot_ptr"] = "*i64"
    done.append(_compile(ops["triton_cache"]._write_kv_kernel, pointers,
                         dict(NUM_HEADS=8, HEAD_DIM=80, PAGE=16, BLOCK_H=8, BLOCK_D=128)))
    return done


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET"):
        sys.exit("unset TRITON_INTERPRET: this compiles for a GPU")
    results = compile_all()
    print(json.dumps(results))
    too_big = [r for r in results if r["shared"] > SHARED_LIMIT]
    sys.exit(f"too much shared memory: {too_big}" if too_big else 0)
