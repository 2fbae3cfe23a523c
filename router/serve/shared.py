"""What `shunter serve --state redis://...` does beyond the in-memory default: replicas that other
frontends can attach to, and frontends that attach (`--frontend-only`).

A serve with Redis state spawns its replicas as named, detached Ray actors in the namespace
`shunter` and registers them in Redis (`replica_registry.py`), so they outlive the frontend that
started them. `--frontend-only` starts no replica: it reads the registry, finds each actor by
name in the Ray cluster at `--address`, and serves from them through a channel of its own. The
last frontend to stop (no other frontend's heartbeat left in Redis) stops the replicas and
unregisters them; a frontend that dies (SIGKILL) leaves them serving the others. The Ray
cluster itself must outlive the frontends: start it apart (`ray start --head`) and give every
frontend `--address`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from shunter.router.shared_state import StateStoreError, probe
from shunter.router.shared_state import ReplicaEntry

NAMESPACE = "shunter"
# Options that configure replicas: a frontend-only serve attaches to replicas already configured.
REPLICA_OPTIONS = ("model", "replicas", "policy", "preemption_mode", "num_cpus_per_replica", "num_gpus_per_replica",
                   "num_threads", "device", "num_kv_blocks", "max_num_seqs", "cpu_kv_gib", "cpu_load_timeout",
                   "large_cache_replicas", "large_cache_factor", "prefill_replicas", "prefill_last_chunk_tokens",
                   "placement", "wait_for_resources")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frontend-only", action="store_true",
                        help="start no replica: attach to those registered in --state (redis://...) by the `shunter "
                             "serve` that started them, in the Ray cluster at --address, and serve them beside it")


def check(args: argparse.Namespace, defaults: argparse.Namespace) -> None:
    """ValueError('--option: why'): --frontend-only's needs, and Redis answering (a wrong
    password or an unreachable server is a start-up error, not a retry loop)."""
    if args.frontend_only:
        if args.state is None:
            raise ValueError("--frontend-only: needs --state redis://... (where the replicas are registered)")
        if args.address is None:
            raise ValueError("--frontend-only: needs --address (the Ray cluster the replicas run in)")
        for name in REPLICA_OPTIONS:
            if getattr(args, name) != getattr(defaults, name):
                raise ValueError(f"--{name.replace('_', '-')}: does not apply with --frontend-only "
                                 "(the replicas it attaches to are already configured)")
    if args.state is not None:
        try:
            probe(args.state)
        except StateStoreError as e:
            raise ValueError(f"--state: {e}") from None


def spawn(args: argparse.Namespace, roles: list, factory: str | None, consumer: str) -> tuple[list, list[ReplicaEntry]]:
    """Start the replicas (named and detached when the state is shared) in a placement group (one
    bundle each, `--placement`) and register them. PlacementError when the cluster cannot hold them."""
    import ray

    from shunter.router.metrics import options as metrics_options

    from shunter.router.cluster import replica_placement

    from shunter.router.shared_state import replica_registry
    from shunter.router.cluster import RayReplicaClient, actor_name
    from shunter.router.cluster import spawn as spawn_actor
    from shunter.router.serve import disaggregation_options

    shared = args.state is not None

    def taken(rid: str, e: Exception | str) -> StateStoreError:
        return StateStoreError(f"{actor_name(rid)} already runs in Ray namespace {NAMESPACE!r} ({e}); attach to "
                               "the running replicas with --frontend-only, or stop them first")

    if shared:  # before the placement group: its name is taken by theirs too
        try:
            ray.get_actor(actor_name("replica-0"), namespace=NAMESPACE)
        except ValueError:
            pass
        else:
            raise taken("replica-0", "found by name")
    group = replica_placement.create(len(roles), args.num_cpus_per_replica, args.num_gpus_per_replica,
                                     args.placement, args.wait_for_resources, detached=shared)
    clients, entries = [], []
    for i, (config, large_cache) in enumerate(roles):
        rid = f"replica-{i}"
        try:
            handle = spawn_actor(rid, config, factory, args.num_cpus_per_replica, args.num_gpus_per_replica,
                                 large_cache, metrics_options.replica_address(args, i),
                                 namespace=NAMESPACE if shared else None, detached=shared, placement=(group, i),
                                 prefill_only=disaggregation_options.prefill_only(args, i))
        except ValueError as e:  # the name is taken: replicas of an earlier serve still run
            raise taken(rid, e) from None
        clients.append(RayReplicaClient(rid, handle, consumer=consumer))
        entries.append(ReplicaEntry(rid, actor_name(rid), NAMESPACE, args.model))
    if shared:
        replica_registry.register(args.state, entries)
    return clients, entries


def attach(args: argparse.Namespace, consumer: str
           ) -> tuple[list, list[ReplicaEntry], str, int | None, int | None]:
    """Clients of the registered replicas that answer, the registry, their model, the size
    threshold (the one given, or the default when some replica holds the large pool) and the
    prefill threshold (likewise, when some replica only prefills)."""
    import ray

    from shunter.router.serve import cache_size_options, disaggregation_options

    from shunter.router.shared_state import replica_registry
    from shunter.router.cluster import RayReplicaClient

    entries = replica_registry.registered(args.state)
    if not entries:
        raise StateStoreError(f"no replica is registered in {args.state}: start one with `shunter serve --state "
                              f"{args.state} --address ...` first")
    reports = replica_registry.last_reports(args.state, [e.replica_id for e in entries])
    clients, live, large, prefill = [], [], False, False
    for entry in entries:
        try:
            handle = ray.get_actor(entry.actor, namespace=entry.namespace)
            info = ray.get(handle.info.remote(), timeout=60)
        except Exception as e:  # gone (its cluster was stopped) or not answering
            print(f"shunter: {entry.replica_id} is registered but does not answer ({type(e).__name__}); skipped",
                  file=sys.stderr, flush=True)
            continue
        heard = "load reported just now" if reports.get(entry.replica_id) else "no frontend has polled it lately"
        print(f"shunter: attaching to {entry.replica_id} ({info.node}, {heard})", flush=True)
        clients.append(RayReplicaClient(entry.replica_id, handle, consumer=consumer))
        live.append(entry)
        large |= info.large_cache
        prefill |= info.prefill_only
    if not clients:
        raise StateStoreError(f"none of the {len(entries)} replicas registered in {args.state} answers")
    threshold = args.size_threshold_blocks
    if threshold is None and large:
        threshold = cache_size_options.DEFAULT_THRESHOLD_BLOCKS
    prefill_threshold = args.prefill_threshold_tokens or disaggregation_options.DEFAULT_THRESHOLD_TOKENS
    return clients, live, live[0].model, threshold if large else None, prefill_threshold if prefill else None


def stop_if_last(args: argparse.Namespace, entries: list[ReplicaEntry]) -> bool:
    """After this frontend stopped: if no other frontend is alive, stop the replicas and
    unregister them. True if it did."""
    import ray

    from shunter.router.cluster import replica_placement

    from shunter.router.shared_state import replica_registry

    try:
        if replica_registry.live_frontends(args.state):
            return False
        for entry in entries:
            try:
                ray.kill(ray.get_actor(entry.actor, namespace=entry.namespace), no_restart=True)
            except ValueError:  # gone already
                pass
        replica_placement.remove_named()
        replica_registry.unregister(args.state, [e.replica_id for e in entries])
    except Exception as e:  # Redis is down at exit: leave them, say so
        print(f"shunter: could not tell whether other frontends still serve ({e}); replicas left running",
              file=sys.stderr, flush=True)
        return False
    return True


def ray_namespace(args: argparse.Namespace) -> str | None:
    return NAMESPACE if args.state is not None else None


def store_for(args: argparse.Namespace) -> Any:
    """The state store `--state` asks for: None (the router's in-memory default) or a RedisStateStore."""
    if args.state is None:
        return None
    from shunter.router.shared_state import RedisStateStore

    return RedisStateStore(args.state)
