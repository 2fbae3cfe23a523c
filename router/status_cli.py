"""`shunter status`: print the cluster table of a running server (one ClusterStatus call)."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="127.0.0.1:50051", help="host:port of `shunter serve`")
    parser.add_argument("--timeout", type=float, default=5.0)


def format_table(status) -> str:
    head = ("replica", "node", "healthy", "run", "wait", "swap", "kv total", "kv used", "kv cached", "hit rate", "load", "cache")
    rows = [head]
    for r in status.replicas:
        rows.append((r.replica_id, r.node, "yes" if r.healthy else "NO", r.num_running, r.num_waiting, r.num_swapped,
                     r.kv_blocks_total, r.kv_blocks_in_use, r.kv_blocks_cached, f"{r.prefix_hit_rate:.2f}", r.load_blocks, "large" if r.large_cache else "-"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in rows]
    c = status.counters
    lines.append(f"model {status.model}  routing {status.routing}  routed {c.routed}  migrated {c.migrated}  "
                 f"failed over {c.failed_over}  rejected {c.rejected}  in flight {c.in_flight}"
                 + (f"  size threshold {status.size_threshold_blocks} blocks" if status.size_threshold_blocks else ""))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import grpc

    from shunter.proto import generation_pb2 as pb
    from shunter.proto import generation_pb2_grpc as pb_grpc

    with grpc.insecure_channel(args.address) as channel:
        try:
            status = pb_grpc.GenerationStub(channel).ClusterStatus(pb.ClusterStatusRequest(), timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"error: cannot reach {args.address}: {e.code().name} {e.details()}", file=sys.stderr)
            return 1
    print(format_table(status))
    return 0
