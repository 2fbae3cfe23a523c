"""The router + gRPC hop: client time to first token minus the engine's own.

`python -m shunter.loadtest.bench_hop [--requests 300] [--repeat 3] [--ray] [--metrics] [--out PATH]`
Replicas run a zero-cost fake engine (`shunter.testing.fake_engine`: no model time) that stamps
when it took each request and when it made its first token, so engine TTFT is known and the rest
is the hop: gRPC, validation, routing, the submit call, the engine thread's wake-up and the
way back (over Ray, the submit's reply carries the first token). With `--ray` the replicas are
Ray actors (the deployed path); their stamps stay in the actors, so the hop reported is the whole
client TTFT (an upper bound: the free engine's own TTFT is tens of microseconds, see the
in-process run); it also times the cheapest actor call from the router's loop, the floor of any
path with a Ray call on it. With `--metrics` the frontend serves its Prometheus page meanwhile
and times every stream, so the run shows what metrics cost the hop. Requests are sequential (one
in flight), so the numbers are latency, not throughput. Prints a table; writes JSON to
`loadtest/results/`.

With `--state redis://...` a second frontend over the same replicas keeps its state in Redis
(`RedisStateStore`), and the rounds alternate between the two (same replicas, same machine,
interleaved so drift hits both): the difference is what shared state adds to a request's path
(its journal and placement writes, batched off the token path; routing itself reads local state).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from shunter.loadtest.bench_cli import run_bench
from shunter.mathutil import percentile
from shunter.router.shared_state import parse_state

RESULTS = Path(__file__).resolve().parent / "results"
WARMUP = 20


def start_clients(use_ray: bool, n: int) -> list:
    if not use_ray:
        from shunter.router.core import LocalReplicaClient
        from shunter.testing.fake_engine import make_zero_cost_engine

        return [LocalReplicaClient(f"r{i}", make_zero_cost_engine) for i in range(n)]
    import ray

    from shunter.router.cluster import RayReplicaClient, spawn

    if not ray.is_initialized():  # else join the caller's (a test session's) instance
        ray.init(num_cpus=max(2, n), include_dashboard=False, log_to_driver=False)
    return [RayReplicaClient(f"r{i}", spawn(f"r{i}", None, "shunter.testing.fake_engine:make_zero_cost_engine"))
            for i in range(n)]


def _ray_running() -> bool:
    import ray

    return ray.is_initialized()


def run_round(server, requests: int, tag: str) -> list[float]:
    """Client TTFT (s) of `requests` sequential requests after a warm-up, 2 tokens each."""
    from shunter.proto import generation_pb2 as pb

    ttft = []
    for i in range(requests + WARMUP):
        req = pb.GenerateRequest(request_id=f"{tag}-{i}", prompt_token_ids=pb.TokenIds(ids=[1 + i % 50] * 32),
                                 sampling=pb.SamplingOptions(max_tokens=2, ignore_eos=True, temperature=0))
        start = time.perf_counter()
        stream = server.stub.Generate(req)
        next(stream)
        ttft.append(time.perf_counter() - start)
        for _ in stream:
            pass
    return ttft[WARMUP:]


async def _actor_rtt(client, n: int) -> list[float]:
    """Round trips of the cheapest replica call (`info`) from the router's event loop: the
    floor any design with a Ray call on the first token's path pays once."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await client.info()
        out.append(time.perf_counter() - start)
    return out


def engine_ttft(clients: list, tag: str) -> list[float]:
    """The engine's own TTFT (s) of one round's measured requests (in-process replicas only)."""
    out = []
    for c in clients:
        stamps = getattr(getattr(c, "core", None), "engine", None)
        for rid, s in (stamps.stamps.items() if stamps is not None else ()):
            if rid.startswith(tag + "-") and int(rid.rsplit("-", 1)[1]) >= WARMUP and len(s) == 2:
                out.append(s[1] - s[0])
    return out


def _redis_state(text: str):
    try:
        url = parse_state(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if url is None:
        raise argparse.ArgumentTypeError("the in-memory state is always timed; give a redis:// URL to compare with")
    return url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=300, help="measured requests per round (after 20 warm-up)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the summary is the median of their p50s")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="replicas as Ray actors (a local Ray instance)")
    parser.add_argument("--metrics", action="store_true", help="serve the frontend's Prometheus page (a free port)")
    parser.add_argument("--out", type=Path, default=None, help="JSON result path (default: loadtest/results/)")
    parser.add_argument("--state", type=_redis_state, default=None, metavar="redis://[:PASSWORD@]HOST:PORT/DB",
                        help="also time a frontend whose state is in this Redis, in alternate rounds")


def _twin(client, consumer: str):
    """A client of the same replica for a second frontend (its own channel of the outbox)."""
    if hasattr(client, "for_consumer"):
        return client.for_consumer(consumer)
    from shunter.router.cluster import RayReplicaClient

    return RayReplicaClient(client.replica_id, client.handle, consumer=consumer)


def _round(server, clients: list, args: argparse.Namespace, tag: str) -> dict:
    client = run_round(server, args.requests, tag)
    engine = engine_ttft(clients, tag)
    c50, e50 = statistics.median(client) * 1e3, (statistics.median(engine) * 1e3 if engine else 0.0)
    rtt = server.call(_actor_rtt(clients[0], max(5, args.requests // 2))) if args.ray else []
    return {"client_ttft_p50_ms": c50, "client_ttft_p99_ms": percentile(client, 0.99) * 1e3,
            "engine_ttft_p50_ms": e50 if engine else None, "hop_p50_ms": c50 - e50,
            "ray_rtt_p50_ms": statistics.median(rtt) * 1e3 if rtt else None}


def run(args: argparse.Namespace) -> int:
    from shunter.router.core import RouterConfig
    from shunter.testing.background import BackgroundServer

    own_ray = args.ray and not _ray_running()
    clients = start_clients(args.ray, args.replicas)
    config = RouterConfig(poll_wait_s=0.5, rebalance=False)
    servers = {"memory": BackgroundServer(clients, config, metrics=args.metrics)}
    if args.state is not None:
        from shunter.router.shared_state import RedisStateStore

        store = RedisStateStore(args.state)
        servers["redis"] = BackgroundServer([_twin(c, store.frontend_id) for c in clients], config,
                                            metrics=args.metrics, state=store)
    rounds: dict[str, list[dict]] = {name: [] for name in servers}
    try:
        for r in range(args.repeat):
            for name, server in servers.items():
                rounds[name].append(_round(server, clients, args, f"{name[0]}{r}"))
    finally:
        for server in reversed(servers.values()):
            server.close()
        if args.ray:
            import ray

            for c in clients:
                ray.kill(c.handle, no_restart=True)
            if own_ray:
                ray.shutdown()
    mode = "ray" if args.ray else "in-process"
    print(f"{mode} replicas ({args.replicas}), {args.requests} sequential requests x {args.repeat} rounds"
          + (", metrics on" if args.metrics else ""))
    summary = {name: _summary(name, rs) for name, rs in rounds.items()}
    result = {
        "bench": "hop", "command": _hide_password(args._invocation, args.state),
        "mode": mode, "metrics": args.metrics, "replicas": args.replicas, "requests": args.requests,
        "rounds": rounds["memory"],
        "hop_p50_ms": summary["memory"]["hop_p50_ms"], "ray_rtt_p50_ms": summary["memory"]["ray_rtt_p50_ms"],
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if "redis" in rounds:
        added = {q: summary["redis"][f"client_ttft_{q}_ms"] - summary["memory"][f"client_ttft_{q}_ms"]
                 for q in ("p50", "p99")}
        print(f"Redis state adds: p50 {added['p50']:+.3f} ms, p99 {added['p99']:+.3f} ms "
              "(client TTFT, medians of rounds)")
        result["state"] = {"url": str(args.state), "redis_rounds": rounds["redis"], "memory": summary["memory"],
                           "redis": summary["redis"], "added_p50_ms": added["p50"], "added_p99_ms": added["p99"]}
    out = args.out or RESULTS / f"bench_hop_{mode}{'_redis' if 'redis' in rounds else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _hide_password(command: str, state) -> str:
    return command.replace(f":{state.password}@", ":***@") if state is not None and state.password else command


def _summary(name: str, rounds: list[dict]) -> dict:
    """Print one state's rounds; the medians over rounds."""
    for i, r in enumerate(rounds):
        eng = f"{r['engine_ttft_p50_ms']:.3f}" if r["engine_ttft_p50_ms"] is not None else "n/a"
        print(f"  {name} round {i}: client TTFT p50 {r['client_ttft_p50_ms']:.3f} ms  "
              f"p99 {r['client_ttft_p99_ms']:.3f} ms  engine TTFT p50 {eng} ms  hop p50 {r['hop_p50_ms']:.3f} ms"
              + (f"  (bare actor call RTT p50 {r['ray_rtt_p50_ms']:.3f} ms)" if r["ray_rtt_p50_ms"] else ""))
    out = {k: statistics.median(r[k] for r in rounds)
           for k in ("client_ttft_p50_ms", "client_ttft_p99_ms", "hop_p50_ms")}
    rtts = [r["ray_rtt_p50_ms"] for r in rounds if r["ray_rtt_p50_ms"]]
    out["ray_rtt_p50_ms"] = statistics.median(rtts) if rtts else None
    print(f"{name}: hop p50 (median of rounds): {out['hop_p50_ms']:.3f} ms"
          + (f";  bare actor call RTT p50 {out['ray_rtt_p50_ms']:.3f} ms" if rtts else ""))
    return out


def main(argv: list[str] | None = None) -> int:
    return run_bench("hop", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
