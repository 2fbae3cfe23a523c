"""`shunter serve`: start replicas as Ray actors, route to them, serve the gRPC API.

With no flags: a local Ray instance started by this command, two SmolLM2 replicas on CPU,
in-memory state, 127.0.0.1:50051. SIGINT/SIGTERM stop new requests (health NOT_SERVING,
UNAVAILABLE), let the running ones finish (up to --drain-timeout), then exit. With
--large-cache-replicas K the first K replicas get the larger KV pool and the long requests
(`cache_size_options.py`).
"""
from __future__ import annotations

import argparse
import sys

from shunter.router import cache_size_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="model name, HF folder, .gguf, random:<shape>, or fake:ids / fake:bytes (a deterministic "
                             "stand-in with no model, for testing the serving path)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--policy", default="fcfs", help="scheduling policy inside each replica")
    parser.add_argument("--routing", default="prefix_aware",
                        help="random, round_robin, least_load, power_of_two or prefix_aware")
    parser.add_argument("--address", default=None, help="Ray cluster address ('auto' to join one); default: start a local one")
    parser.add_argument("--state", default="memory", help="state store: memory")
    parser.add_argument("--num-cpus-per-replica", type=float, default=1.0)
    parser.add_argument("--num-gpus-per-replica", type=float, default=0.0, help="fractions allowed, e.g. 0.5")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when replicas get GPUs)")
    parser.add_argument("--num-kv-blocks", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--no-rebalance", action="store_true", help="turn off load-pair migration")
    parser.add_argument("--max-in-flight", type=int, default=1024)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    cache_size_options.add_arguments(parser)


def _engine_config(args: argparse.Namespace):
    from shunter.replica.engine_config import EngineConfig

    device = args.device or ("cuda" if args.num_gpus_per_replica > 0 else "cpu")
    return EngineConfig(model=args.model, policy=args.policy, device=device, num_kv_blocks=args.num_kv_blocks,
                        max_num_seqs=args.max_num_seqs)


def _validate(args: argparse.Namespace) -> None:
    from shunter.router.policies import REGISTRY

    if args.replicas < 1:
        raise ValueError(f"replicas: must be >= 1, got {args.replicas}")
    if args.routing not in REGISTRY:
        raise ValueError(f"routing: must be one of {', '.join(sorted(REGISTRY))}, got {args.routing!r}")
    if args.state != "memory":
        raise ValueError(f"state: only 'memory' is available in this build, got {args.state!r}")
    if not 0 < args.port < 65536:
        raise ValueError(f"port: must be in 1..65535, got {args.port}")


async def serve(args: argparse.Namespace, clients: list) -> int:
    import asyncio
    import signal

    from shunter.router.frontend import Frontend
    from shunter.router.router import Router, RouterConfig

    router = Router(clients, RouterConfig(routing=args.routing, rebalance=not args.no_rebalance,
                                          max_in_flight=args.max_in_flight,
                                          size_threshold_blocks=cache_size_options.threshold(args)))
    await router.start()
    frontend = Frontend(router, args.host, args.port, model=args.model)
    await frontend.start()
    print(f"shunter: serving {args.model} from {len(clients)} replicas on {args.host}:{frontend.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print(f"shunter: draining {len(router.journal)} requests", flush=True)
    drained = await frontend.drain_and_stop(args.drain_timeout)
    await router.stop()
    print("shunter: stopped" + ("" if drained else " (drain timed out)"), flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        _validate(args)
        cache_size_options.validate(args)
        roles = cache_size_options.replica_roles(args, _engine_config(args))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import asyncio

    import ray

    from shunter.router.replica_actor import RayReplicaClient, spawn
    from shunter.testing.fake_engine import FACTORY, FAKE_MODEL_PREFIX

    if args.address:
        ray.init(address=args.address, include_dashboard=False)
    else:
        need = max(1, int(args.replicas * args.num_cpus_per_replica + 0.999))
        ray.init(num_cpus=need, include_dashboard=False)
    clients = []
    factory = FACTORY if args.model.startswith(FAKE_MODEL_PREFIX) else None
    for i, (config, large_cache) in enumerate(roles):
        rid = f"replica-{i}"
        handle = spawn(rid, config, factory, args.num_cpus_per_replica, args.num_gpus_per_replica, large_cache)
        clients.append(RayReplicaClient(rid, handle))
    try:
        return asyncio.run(serve(args, clients))
    finally:
        ray.shutdown()
