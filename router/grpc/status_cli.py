"""`shunter status`: print the cluster table of a running server (one ClusterStatus call).

Every number says its unit: the KV columns and load count KV blocks (16 tokens each, the block
size `shunter serve` runs with), the counters count requests.
"""
from __future__ import annotations

import argparse
import sys

from shunter.replica.engine_config import EngineConfig
from shunter.replica.step_staircase import tile_of
from shunter.router.security import options as security_options

BLOCK_TOKENS = EngineConfig.block_size  # the default; serve has no option to change it
HEAD = ("replica", "node", "healthy", "running", "waiting", "swapped",
        "kv blocks", "kv in use", "kv cached", "prefix hits", "cpu tier", "load (blocks)", "moving out/in", "role",
        "step tiles",
        "spec accepted", "metrics")
LEGEND = (
    f"running/waiting/swapped: requests. kv: KV-cache blocks of {BLOCK_TOKENS} tokens; in use = held by requests, "
    "cached = free but holding a reusable prefix.\n"
    "prefix hits: share of prompt tokens found in the cache (both tiers). cpu tier: CPU blocks holding a prefix "
    "copy / CPU pool, and the share of prompt tokens found there (--cpu-kv-gib; - : none).\n"
    "load: blocks in use + blocks running requests will "
    "still take + blocks of queued prompts (what routing balances).\nmoving out/in: requests migrating off and onto "
    "it now (a live migration holds blocks on the target, counted in kv in use, and keeps running on the source "
    "until its commit). role: large = holds the larger KV pool "
    "(--large-cache-replicas); prefill = takes long prompts' prefills and hands each off after its first token "
    "(--prefill-replicas).\nstep tiles: the tile of the step-time staircase timed at start-up, in tokens, and its "
    "first and last boundaries (- : not timed, or no stairs).\nmetrics: the port of the replica's own Prometheus page, "
    "on its node (--replica-metrics-port-base).\nspec accepted: speculative draft tokens accepted / verified "
    "(--speculative; - : none verified)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="127.0.0.1:50051", help="host:port of `shunter serve`")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    security_options.add_client_arguments(parser)


def _cpu_tier(r) -> str:
    if not r.kv_cpu_blocks_total:
        return "-"
    return f"{r.kv_cpu_blocks_cached}/{r.kv_cpu_blocks_total} {r.prefix_hit_rate_cpu:.0%}"


def _role(r) -> str:
    return "prefill" if r.prefill_only else "large" if r.large_cache else "-"


def format_table(status) -> str:
    rows = [HEAD]
    for r in status.replicas:
        rows.append((r.replica_id, r.node, "yes" if r.healthy else "NO", r.num_running, r.num_waiting, r.num_swapped,
                     r.kv_blocks_total, r.kv_blocks_in_use, r.kv_blocks_cached, f"{r.prefix_hit_rate:.0%}",
                     _cpu_tier(r), r.load_blocks, f"{r.migrating_out}/{r.migrating_in}", _role(r),
                     tiles(list(r.step_tile_boundaries)),
                     f"{r.spec_acceptance_rate:.0%}" if r.spec_acceptance_rate else "-", r.metrics_port or "-"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(HEAD))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    c = status.counters
    lines.append(f"model {status.model}  routing {status.routing}"
                 + (f"  size threshold {status.size_threshold_blocks} blocks" if status.size_threshold_blocks else "")
                 + (f"  prefill threshold {status.prefill_threshold_tokens} tokens"
                    if status.prefill_threshold_tokens else "")
                 + (f"  metrics port {status.metrics_port}" if status.metrics_port else ""))
    lines.append(f"requests: routed {c.routed}  migrated {c.migrated} (moving now {c.migrating}, aborted "
                 f"{c.migrations_aborted}, refused {c.migrations_refused})"
                 + (f"  handed off {c.handed_off}" if status.prefill_threshold_tokens else "")
                 + f"  failed over {c.failed_over}  "
                 f"rejected {c.rejected} (invalid, over --max-in-flight, draining, or no healthy replica)  "
                 f"in flight {c.in_flight}  queued {c.queued}")
    lines.append(LEGEND)
    return "\n".join(lines)


def tiles(boundaries: list[int]) -> str:
    """'128 (128..896)': the tile and the boundaries' span; '-' without boundaries."""
    tile = tile_of(boundaries)
    return "-" if tile is None else f"{tile} ({boundaries[0]}..{boundaries[-1]})"


def run(args: argparse.Namespace) -> int:
    import grpc

    from shunter.proto import generation_pb2 as pb
    from shunter.proto import generation_pb2_grpc as pb_grpc

    with security_options.client_channel(args, args.address) as channel:
        try:
            status = pb_grpc.GenerationStub(channel).ClusterStatus(pb.ClusterStatusRequest(), timeout=args.timeout,
                                                                   metadata=security_options.call_metadata(args))
        except grpc.RpcError as e:
            print(f"error: cannot reach {args.address}: {e.code().name} {e.details()}", file=sys.stderr)
            return 1
    print(format_table(status))
    return 0
