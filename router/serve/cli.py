"""`shunter serve`: start replicas as Ray actors, route to them, serve the gRPC API.

With no flags: a local Ray instance started by this command, two SmolLM2 replicas on CPU,
in-memory state, 127.0.0.1:50051. SIGINT/SIGTERM stop new requests (health NOT_SERVING,
UNAVAILABLE), let the running ones finish (up to --drain-timeout), then exit. With
--large-cache-replicas K the first K replicas get the larger KV pool and the long requests
(`cache_size_options.py`); with --prefill-replicas K the last K only prefill long prompts and
hand them off (`disaggregation_options.py`). --metrics-port and --replica-metrics-port-base serve Prometheus
pages (`metrics/options.py`). With --http-port the OpenAI-compatible HTTP API (`http/gateway.py`)
runs in the same event loop over the same router, with the same API keys and TLS, and drains with it.

Every option is checked before Ray starts (`check`): a wrong one is one line and exit 2, not a
replica that dies 16 s later.
"""
from __future__ import annotations

import argparse
import glob
import os
import socket
import sys

from shunter.cli_args import float_above, int_at_least
from shunter.replica.engine_config import PREEMPTION_MODES
from shunter.replica import speculative as speculative_options
from shunter.replica.policies import POLICIES
from shunter.router.serve import (cache_size_options, disaggregation_options, migration_options, prefix_routing_options,
                                  rebalance_options)
from shunter.router.metrics import options as metrics_options
from shunter.router.cluster import replica_placement
from shunter.router.security import options as security_options
from shunter.router.serve import shared as serve_shared
from shunter.router.routing import DEFAULT as DEFAULT_ROUTING
from shunter.router.routing import REGISTRY as ROUTINGS
from shunter.router.shared_state import MEMORY, RedisURL, StateStoreError, parse_state
from shunter.testing.fake_engine import FACTORY, FAKE_MODEL_PREFIX, parse_fake_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="smollm2-135m-instruct, a Hugging Face folder, a .gguf file, random:<shape>, or fake:ids / "
                             "fake:bytes[:STEP_MS] (a deterministic stand-in with no model, for testing the serving path)")
    parser.add_argument("--replicas", type=int_at_least(1), default=2, help="engine replicas (Ray actors)")
    parser.add_argument("--host", default="127.0.0.1", help="address the gRPC server listens on")
    parser.add_argument("--port", type=int_at_least(0, 65535), default=50051, help="gRPC port (0: any free one)")
    parser.add_argument("--http-port", type=int_at_least(0, 65535), default=None,
                        help="also serve the OpenAI-compatible HTTP API on this port (on --host); default: off")
    parser.add_argument("--policy", default="fcfs", choices=sorted(POLICIES),
                        help="scheduling policy inside each replica")
    parser.add_argument("--cache-aware-order", action="store_true",
                        help="within a priority class, run waiting requests with more cached prefix blocks first "
                             "(bounded by the policy's aging; not with --policy static)")
    parser.add_argument("--max-num-batched-tokens", type=int_at_least(1), default=512,
                        help="most tokens one engine step computes (--policy rad: at least one tile of the measured "
                             "step-time staircase)")
    parser.add_argument("--preemption-mode", default="recompute", choices=PREEMPTION_MODES,
                        help="how a replica makes room when its KV cache is full (auto: the cheaper, as measured)")
    parser.add_argument("--routing", default=DEFAULT_ROUTING, choices=sorted(ROUTINGS),
                        help="how the router picks a replica for a new request")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join ('auto': the local one); default: start a local one")
    parser.add_argument("--state", default=MEMORY, type=_state, metavar="memory|redis://[:PASSWORD@]HOST:PORT/DB",
                        help="where the request journal and the shared routing state live: this process (memory), or "
                             "Redis (rediss:// for TLS), shared with every frontend serving the same replicas")
    parser.add_argument("--num-cpus-per-replica", type=float_above(0), default=1.0, help="Ray CPUs per replica")
    parser.add_argument("--num-gpus-per-replica", type=float_above(0, inclusive=True), default=0.0,
                        help="Ray GPUs per replica (1: one replica per GPU); fractions share one GPU, e.g. 0.5 "
                             "(also --gpus-per-replica)")
    parser.add_argument("--gpus-per-replica", dest="num_gpus_per_replica", type=float_above(0, inclusive=True),
                        default=0.0, help=argparse.SUPPRESS)  # the name issue 16 uses; separate, so errors name one
    parser.add_argument("--placement", default=replica_placement.DEFAULT, choices=list(replica_placement.STRATEGIES),
                        help="how replicas spread over the Ray cluster's nodes (a placement group, one bundle per "
                             "replica): spread = different nodes where possible; strict-spread = each on its own "
                             "node, or no start; pack = as few nodes as possible")
    parser.add_argument("--wait-for-resources", type=float_above(0, inclusive=True), default=0.0, metavar="SECONDS",
                        help="wait this long for nodes with the replicas' CPUs/GPUs to join the Ray cluster (an "
                             "autoscaler starting them); 0: a cluster that lacks them is a start-up error at once")
    parser.add_argument("--num-threads", type=int_at_least(1), default=None,
                        help="torch CPU threads per replica (default: --num-cpus-per-replica, at least 1)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"],
                        help="default: cuda when replicas get GPUs, else cpu")
    parser.add_argument("--num-kv-blocks", type=int_at_least(1), default=None,
                        help="KV blocks per replica (default: sized from free memory)")
    parser.add_argument("--max-num-seqs", type=int_at_least(1), default=64, help="requests a replica runs at once")
    parser.add_argument("--cpu-kv-gib", type=float_above(0), default=None, metavar="GIB",
                        help="CPU memory per replica for one KV pool serving swap and a second tier of the prefix "
                             "cache: published blocks are copied there, and a prefix evicted from the device is "
                             "loaded back instead of recomputed (default: no CPU tier)")
    parser.add_argument("--cpu-load-timeout", type=float_above(0), default=None, metavar="SECONDS",
                        help="a load from the CPU tier not landed after this long is given up on: its request "
                             "computes those tokens instead (default: 1.0)")
    parser.add_argument("--no-async-scheduling", action="store_true",
                        help="replicas step synchronously: the next step is scheduled only once this one's tokens "
                             "are back (default on a GPU: scheduled while the device runs this one; on the CPU a "
                             "step is computed when it is launched, so replicas step synchronously anyway)")
    speculative_options.add_arguments(parser)
    parser.add_argument("--max-in-flight", type=int_at_least(1), default=1024,
                        help="requests placed on replicas at once; more wait in the admission queue")
    parser.add_argument("--max-queued", type=int_at_least(0), default=0,
                        help="requests waiting for a slot; more are refused with RESOURCE_EXHAUSTED and a "
                             "retry-after-ms hint in the trailing metadata")
    parser.add_argument("--drain-timeout", type=float_above(0, inclusive=True), default=30.0,
                        help="seconds Ctrl-C/SIGTERM waits for running requests")
    cache_size_options.add_arguments(parser)
    disaggregation_options.add_arguments(parser)
    migration_options.add_arguments(parser)
    prefix_routing_options.add_arguments(parser)
    rebalance_options.add_arguments(parser)
    metrics_options.add_arguments(parser)
    security_options.add_arguments(parser)
    serve_shared.add_arguments(parser)


def _state(text: str) -> RedisURL | None:
    try:
        return parse_state(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check(args: argparse.Namespace) -> None:
    """What argparse cannot see alone; ValueError('--option: why'). Starts nothing."""
    from shunter.replica.models.sources import model_source

    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    serve_shared.check(args, defaults.parse_args([]))
    if args.frontend_only:
        check_port_free(args.host, args.port)
        return
    try:
        if args.model.startswith(FAKE_MODEL_PREFIX):
            parse_fake_model(args.model)
        else:
            model_source(args.model)
    except ValueError as e:
        raise ValueError(f"--model: {str(e).removeprefix('model: ')}") from None
    check_scheduling(args)
    check_cpu_kv(args)
    prefix_routing_options.validate(args)
    if not args.model.startswith(FAKE_MODEL_PREFIX):
        speculative_options.check_draft_model(args, convert=False)
    cache_size_options.validate(args)
    disaggregation_options.validate(args)
    metrics_options.validate(args)
    security_options.from_args(args)
    if args.num_gpus_per_replica > 0 and args.address is None and not glob.glob("/dev/nvidia[0-9]*"):
        raise ValueError("--num-gpus-per-replica: this machine has no NVIDIA GPU for a local Ray instance")
    check_port_free(args.host, args.port)
    if args.metrics_port:
        check_port_free(args.metrics_host, args.metrics_port, "--metrics-host", "--metrics-port")
    if args.http_port is not None:
        if args.http_port == args.port != 0:
            raise ValueError(f"--http-port: {args.http_port} is the gRPC --port too")
        check_port_free(args.host, args.http_port, "--host", "--http-port")


def check_scheduling(args: argparse.Namespace) -> None:
    """The scheduling flags that cannot go together (each error names its flag)."""
    from shunter.replica.step_staircase import STRIDE

    if args.cache_aware_order and args.policy == "static":
        raise ValueError("--cache-aware-order: --policy static admits whole batches in arrival order; there is no "
                         "queue order to make cache-aware")
    if args.policy == "rad" and args.max_num_batched_tokens < STRIDE:
        raise ValueError(f"--max-num-batched-tokens: {args.max_num_batched_tokens} is below one tile (the start-up "
                         f"timing resolves tiles of {STRIDE} tokens or more); --policy rad sizes steps in whole tiles")


def check_cpu_kv(args: argparse.Namespace) -> None:
    """`--cpu-kv-gib` must fit in this machine's memory, for every replica a local Ray places here."""
    if args.cpu_kv_gib is None:
        if args.cpu_load_timeout is not None:
            raise ValueError("--cpu-load-timeout: needs --cpu-kv-gib (there is no CPU tier to load from)")
        return
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    here = args.replicas if args.address is None else 1
    if args.cpu_kv_gib * here >= total:
        raise ValueError(f"--cpu-kv-gib: {here} x {args.cpu_kv_gib:g} GiB is more than this machine's "
                         f"{total:.1f} GiB of memory")


def check_port_free(host: str, port: int, host_option: str = "--host", port_option: str = "--port") -> None:
    """Bind host:port once, as the gRPC and HTTP servers will (SO_REUSEADDR), and let it go."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ValueError(f"{host_option}: cannot resolve {host!r} ({e.strerror})") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise ValueError(f"{port_option}: cannot listen on {host}:{port} ({e.strerror}); "
                             "is another server running?") from None


def _engine_config(args: argparse.Namespace):
    from shunter.replica.engine_config import EngineConfig

    device = args.device or ("cuda" if args.num_gpus_per_replica > 0 else "cpu")
    threads = args.num_threads or max(1, int(args.num_cpus_per_replica))
    return EngineConfig(model=args.model, policy=args.policy, preemption_mode=args.preemption_mode, device=device,
                        num_kv_blocks=args.num_kv_blocks, max_num_seqs=args.max_num_seqs, num_threads=threads,
                        cpu_kv_gib=args.cpu_kv_gib,
                        cpu_load_timeout_s=args.cpu_load_timeout or EngineConfig.cpu_load_timeout_s,
                        async_scheduling=False if args.no_async_scheduling else None,
                        cache_aware_order=args.cache_aware_order,
                        max_num_batched_tokens=args.max_num_batched_tokens,
                        **speculative_options.engine_settings(args))


def _router_config(args: argparse.Namespace, threshold: int | None, prefill_threshold: int | None = None):
    from shunter.router.core import RouterConfig

    return RouterConfig(routing=args.routing, rebalance=not args.no_rebalance,
                        routing_settings=prefix_routing_options.settings(args),
                        rebalancer_settings=rebalance_options.settings(args),
                        max_in_flight=args.max_in_flight, max_queued=args.max_queued, size_threshold_blocks=threshold,
                        migration=migration_options.settings(args), prefill_threshold_tokens=prefill_threshold)


async def serve(args: argparse.Namespace, clients: list, state=None, threshold: int | None = None,
                prefill_threshold: int | None = None) -> int:
    """`state`: the router's StateStore (None: in memory); `threshold`: the cache-size threshold;
    `prefill_threshold`: P/D disaggregation's (None: no replica only prefills)."""
    import asyncio
    import signal

    from shunter.router.grpc import Frontend
    from shunter.router.metrics import serve_frontend_metrics
    from shunter.router.core import Router

    router = Router(clients, _router_config(args, threshold, prefill_threshold), state=state)
    await router.start()
    address = metrics_options.frontend_address(args)
    metrics = serve_frontend_metrics(router, address) if address is not None else None
    security = security_options.from_args(args)
    frontend = Frontend(router, args.host, args.port, model=args.model, metrics=metrics, security=security)
    await frontend.start()
    gateway = None
    if args.http_port is not None:
        from shunter.router.http import HttpGateway

        gateway = HttpGateway(router, args.host, args.http_port, model=args.model, security=security,
                              metrics=metrics)
        await gateway.start()
    page = f", metrics on http://{args.metrics_host}:{metrics.page.port}/metrics" if metrics is not None else ""
    http = f", OpenAI HTTP on {gateway.scheme}://{args.host}:{gateway.port}/v1" if gateway is not None else ""
    print(f"shunter: serving {args.model} from {len(clients)} replicas on {args.host}:{frontend.port} "
          f"({security.describe()}){http}{page}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print(f"shunter: draining {len(router.journal)} requests", flush=True)
    drained = await frontend.drain_and_stop(args.drain_timeout)
    if gateway is not None:
        await gateway.stop()
    await router.stop()
    if metrics is not None:
        metrics.page.close()
    print("shunter: stopped; every request finished" if drained else
          f"shunter: stopped; after --drain-timeout {args.drain_timeout:g} s, {router.cut_at_drain} requests still "
          "running or queued were ended (finish_reason 'shutdown', or UNAVAILABLE if not started)", flush=True)
    return 0


def _prepare_model(args: argparse.Namespace) -> None:
    """Convert a GGUF model here, once, before the replicas start: each would wait on it anyway."""
    if args.model.startswith(FAKE_MODEL_PREFIX):
        return
    from shunter.replica.models.loader import prepare_model

    prepare_model(args.model, lambda folder: print(f"shunter: converting {args.model} once into {folder}", flush=True))


def _say_token_auth(args: argparse.Namespace) -> None:
    """Ray >= 2.59 turns token authentication on for a local instance (a token generated into
    ~/.ray/auth_token) and warns that it did; asking for it explicitly keeps the same security
    without the warning. Ray reads the mode when it is imported, so this must come first."""
    if args.address is None and "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def _start_ray(args: argparse.Namespace, verbose: bool) -> None:
    import logging

    import ray

    level = logging.INFO if verbose else logging.WARNING
    namespace = serve_shared.ray_namespace(args)  # where other frontends find the replicas by name
    if args.address:
        ray.init(address=args.address, include_dashboard=False, logging_level=level, namespace=namespace)
        return
    need = max(1, int(args.replicas * args.num_cpus_per_replica + 0.999))
    ray.init(num_cpus=need, include_dashboard=False, logging_level=level, namespace=namespace)


def run(args: argparse.Namespace) -> int:
    try:
        check(args)
        roles = [] if args.frontend_only else disaggregation_options.with_prefill_roles(
            args, cache_size_options.replica_roles(args, _engine_config(args)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _say_token_auth(args)
    import asyncio

    import ray

    if not args.frontend_only:
        _prepare_model(args)
        try:
            speculative_options.check_draft_model(args)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    _start_ray(args, getattr(args, "verbose", 0) > 0)
    state = serve_shared.store_for(args)
    consumer = state.frontend_id if state is not None else ""  # this frontend's channel on each replica
    factory = FACTORY if args.model.startswith(FAKE_MODEL_PREFIX) else None
    try:
        try:
            if args.frontend_only:
                clients, entries, args.model, threshold, prefill_threshold = serve_shared.attach(args, consumer)
            else:
                clients, entries = serve_shared.spawn(args, roles, factory, consumer)
                threshold = cache_size_options.threshold(args)
                prefill_threshold = disaggregation_options.threshold(args)
        except (StateStoreError, replica_placement.PlacementError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if state is not None:
            state.registry = entries
        code = asyncio.run(serve(args, clients, state, threshold, prefill_threshold))
        if state is not None and serve_shared.stop_if_last(args, entries):
            print("shunter: no other frontend is left; stopped the replicas", flush=True)
        return code
    finally:
        ray.shutdown()
