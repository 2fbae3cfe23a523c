"""The router + gRPC hop: client time to first token minus the engine's own.

`python -m shunter.router.bench_hop [--requests 300] [--ray]`
Replicas run a fake engine with no model time that stamps when it took each request and when
its first token was made, so engine TTFT is known exactly and the rest is the hop: gRPC,
validation, routing, the submit call, the engine thread's wake-up and the poll back. With
`--ray` the replicas are Ray actors (the deployed path); without, in-process.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def _engine_factory(config=None):
    from tests.fakes import FakeEngine

    class StampedEngine(FakeEngine):
        def __init__(self, config=None) -> None:
            super().__init__(config, step_time=0.0)
            self.stamps: dict[str, list[float]] = {}

        def add_request(self, request_id, prompt_token_ids, params, arrival_time=None) -> None:
            super().add_request(request_id, prompt_token_ids, params, arrival_time)
            self.stamps[request_id] = [time.monotonic()]

        def step(self):
            outs = super().step()
            now = time.monotonic()
            for o in outs:
                if len(o.output_token_ids) == 1:
                    self.stamps[o.request_id].append(now)
            return outs

    return StampedEngine(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--ray", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, ".")
    from shunter.proto import generation_pb2 as pb
    from shunter.router.replica_client import LocalReplicaClient
    from shunter.router.router import RouterConfig
    from tests.router.conftest import ServerThread

    if args.ray:
        import os

        import ray

        from shunter.router.replica_actor import RayReplicaClient, spawn

        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
        clients = [RayReplicaClient(f"r{i}", spawn(f"r{i}", None, "shunter.router.bench_hop:_engine_factory"))
                   for i in range(2)]
    else:
        clients = [LocalReplicaClient(f"r{i}", _engine_factory) for i in range(2)]
    server = ServerThread(clients, RouterConfig(poll_wait_s=0.5, rebalance=False))
    client_ttft = []
    for i in range(args.requests + 20):
        req = pb.GenerateRequest(request_id=f"h{i}", prompt_token_ids=pb.TokenIds(ids=[1 + i % 50] * 32),
                                 sampling=pb.SamplingOptions(max_tokens=2, ignore_eos=True, temperature=0))
        start = time.perf_counter()
        stream = server.stub.Generate(req)
        next(stream)
        client_ttft.append(time.perf_counter() - start)
        list(stream)
    client_ttft = client_ttft[20:]  # warm-up
    engine_ttft = []
    if not args.ray:
        for c in clients:
            engine_ttft += [s[1] - s[0] for rid, s in c.core.engine.stamps.items() if len(s) == 2 and int(rid[1:]) >= 20]
    server.close()
    p50 = statistics.median(client_ttft) * 1e3
    p99 = sorted(client_ttft)[int(0.99 * len(client_ttft))] * 1e3
    eng = statistics.median(engine_ttft) * 1e3 if engine_ttft else float("nan")
    print(f"{'ray' if args.ray else 'in-process'} replicas, {args.requests} sequential requests")
    print(f"client TTFT p50 {p50:.3f} ms  p99 {p99:.3f} ms;  engine TTFT p50 {eng:.3f} ms;  "
          f"hop p50 {p50 - (eng if engine_ttft else 0):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
