"""Chaos: mixed load on Ray replicas while replica processes are SIGKILLed at random.

`shunter bench chaos [--model smollm2-135m-instruct] [--replicas 2] [--requests 32] [--kills 3] [--out PATH]`
The same requests (seeded prompts of mixed lengths, greedy, mixed max_tokens) run through the
real gRPC frontend and router: one round without faults, then rounds while a killer SIGKILLs a
random replica that holds requests, about every --kill-interval seconds and only while another
replica is up (so there is somewhere to fail over to; Ray restarts the victim and the router
routes to it again). The rounds go on until --kills kills are done and every replica is back, or
--max-duration passes: the run is bounded, and its length does not depend on the model's speed.
Every stream must equal an offline greedy run of the same engine: a request is lost if its
stream errs or ends short, duplicated if it has more tokens than the reference, mismatched if
its tokens differ otherwise. Writes a JSON report (requests, kills, failovers, lost, duplicated,
mismatched, p50/p99 latency of both runs) to loadtest/results/; exit status 1 unless every
request came back exact.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

from shunter.cli_args import float_above, int_at_least
from shunter.loadtest.bench_cli import run_bench
from shunter.mathutil import percentile

RESULTS = Path(__file__).resolve().parent / "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m-instruct", help="(default: %(default)s; random:tiny is fast)")
    parser.add_argument("--replicas", type=int_at_least(2), default=2, help="(default: %(default)s)")
    parser.add_argument("--requests", type=int_at_least(1), default=32, help="per run (default: %(default)s)")
    parser.add_argument("--concurrency", type=int_at_least(1), default=6, help="streams at once (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int_at_least(2), default=32,
                        help="the longest output; each request asks for 1/4..1 of it (default: %(default)s)")
    parser.add_argument("--kills", type=int_at_least(1), default=3, help="SIGKILLs at most (default: %(default)s)")
    parser.add_argument("--kill-interval", type=float_above(0), default=3.0,
                        help="mean seconds between kills, jittered x0.5..1.5 (default: %(default)s)")
    parser.add_argument("--max-duration", type=float_above(0), default=600.0,
                        help="seconds the rounds with kills may take at most (default: %(default)s)")
    parser.add_argument("--num-kv-blocks", type=int_at_least(1), default=128, help="per replica (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="prompts and kill times (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="JSON path (default: loadtest/results/bench_chaos_MODEL.json)")


@dataclasses.dataclass
class Outcome:
    tokens: list[int]
    error: str | None
    latency_s: float


def workload(args: argparse.Namespace, vocab: int) -> list[tuple[list[int], int]]:
    """(prompt ids, max_tokens) per request: prompts of 8..120 tokens, outputs of a quarter to all of --max-tokens."""
    rng = random.Random(args.seed)
    return [([rng.randrange(10, vocab) for _ in range(rng.randint(8, 120))],
             rng.randint(max(1, args.max_tokens // 4), args.max_tokens)) for _ in range(args.requests)]


def offline(config, requests: list[tuple[list[int], int]]) -> list[list[int]]:
    from shunter.replica.llm import LLM
    from shunter.sampling_params import SamplingParams

    llm = LLM(**dataclasses.asdict(config))
    outs = llm.generate([p for p, _ in requests],
                        [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for _, n in requests],
                        use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def one(stub, prompt: list[int], max_tokens: int) -> Outcome:
    import grpc

    from shunter.proto import generation_pb2 as pb

    req = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=prompt),
                             sampling=pb.SamplingOptions(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    start, tokens = time.perf_counter(), []
    try:
        for chunk in stub.Generate(req, timeout=600):
            tokens += chunk.token_ids
    except grpc.RpcError as e:
        return Outcome(tokens, f"{e.code().name}: {e.details()}", time.perf_counter() - start)
    return Outcome(tokens, None, time.perf_counter() - start)


def run_load(server, requests: list[tuple[list[int], int]], concurrency: int) -> tuple[list[Outcome], float]:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(lambda r: one(server.stub, *r), requests))
    return outcomes, time.perf_counter() - start


class Killer(threading.Thread):
    """SIGKILLs a random replica that holds requests, while another is healthy, every interval."""

    def __init__(self, router, kills: int, interval_s: float, seed: int) -> None:
        """`router` is read from this thread: only whole values (health, pids, a list of its journal)."""
        super().__init__(name="chaos-killer", daemon=True)
        self.router, self.kills_left, self.interval_s = router, kills, interval_s
        self.rng, self.stop, self.killed = random.Random(seed), threading.Event(), []
        self.dead_pids: set[int] = set()

    def run(self) -> None:
        while self.kills_left and not self.stop.wait(self.interval_s * self.rng.uniform(0.5, 1.5)):
            # A killed replica the router has not yet seen die still looks healthy: its pid tells.
            pids = {rid: s.info.pid for rid, s in self.router.slots.items() if s.healthy and s.info is not None}
            healthy = [rid for rid, pid in pids.items() if pid not in self.dead_pids]
            busy = [rid for rid in healthy if self.router.journal.owned_by(rid)]
            if len(healthy) < 2 or not busy:
                continue
            victim = self.rng.choice(busy)
            self.dead_pids.add(pids[victim])
            try:
                os.kill(pids[victim], signal.SIGKILL)
            except ProcessLookupError:  # it died on its own meanwhile
                continue
            self.killed.append(victim)
            self.kills_left -= 1

    def done(self) -> bool:
        """Every kill made and every replica routed to again."""
        slots = self.router.slots.values()
        return not self.kills_left and all(s.healthy and s.info.pid not in self.dead_pids for s in slots)


def verdict(outcomes: list[Outcome], reference: list[list[int]]) -> dict[str, int]:
    lost = duplicated = mismatched = 0
    for got, ref in zip(outcomes, reference):
        if got.error is not None or (len(got.tokens) < len(ref) and got.tokens == ref[: len(got.tokens)]):
            lost += 1
        elif len(got.tokens) > len(ref):
            duplicated += 1
        elif got.tokens != ref:
            mismatched += 1
    return {"lost": lost, "duplicated": duplicated, "mismatched": mismatched}


def latency(outcomes: list[Outcome], wall_s: float) -> dict[str, float]:
    times = [o.latency_s for o in outcomes]
    return {"p50_s": round(percentile(times, 0.5), 3), "p99_s": round(percentile(times, 0.99), 3),
            "wall_s": round(wall_s, 2)}


def chaos(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from shunter.replica.engine_config import EngineConfig
    from shunter.router.cluster import RayReplicaClient, spawn
    from shunter.router.core import RouterConfig
    from shunter.testing.background import BackgroundServer

    config = EngineConfig(model=args.model, device="cpu", num_kv_blocks=args.num_kv_blocks, seed=0, num_threads=1)
    if not ray.is_initialized():  # else join the caller's (a test session's) instance
        ray.init(num_cpus=args.replicas, include_dashboard=False, log_to_driver=False)
    clients = [RayReplicaClient(f"chaos{i}", spawn(f"chaos{i}", config, num_cpus=1)) for i in range(args.replicas)]
    server = BackgroundServer(clients, RouterConfig(routing="round_robin", poll_wait_s=0.2, rebalance=False,
                                                    rejoin_timeout_s=300))
    try:
        requests = workload(args, server.router.info.limits.vocab_size)
        reference = offline(config, requests)
        calm, calm_wall = run_load(server, requests, args.concurrency)
        failed_over = server.router.counters.failed_over
        killer = Killer(server.router, args.kills, args.kill_interval, args.seed)
        killer.start()
        stormy, stormy_wall, rounds = [], 0.0, 0
        deadline = time.monotonic() + args.max_duration
        while not killer.done() and time.monotonic() < deadline:
            outcomes, wall = run_load(server, requests, args.concurrency)
            stormy, stormy_wall, rounds = stormy + outcomes, stormy_wall + wall, rounds + 1
        killer.stop.set()
        killer.join()
        failovers = server.router.counters.failed_over - failed_over
    finally:
        server.close()
        for c in clients:
            ray.kill(c.handle, no_restart=True)
    return {"requests": len(stormy), "rounds": rounds, "replicas": args.replicas, "concurrency": args.concurrency,
            "kills": len(killer.killed), "killed": killer.killed, "failovers": failovers,
            **verdict(stormy, reference * rounds), "fault_free": {**latency(calm, calm_wall), **verdict(calm, reference)},
            "with_kills": latency(stormy, stormy_wall),
            "errors": sorted({o.error for o in stormy if o.error})}


def run(args: argparse.Namespace) -> int:
    result = {"invocation": getattr(args, "_invocation", "shunter bench chaos"), "model": args.model,
              "seed": args.seed, **chaos(args)}
    out = args.out or RESULTS / f"bench_chaos_{args.model.replace(':', '-')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    calm, stormy = result["fault_free"], result["with_kills"]
    print(f"{result['requests']} requests, {result['kills']} kills, {result['failovers']} failovers: "
          f"lost {result['lost']}, duplicated {result['duplicated']}, mismatched {result['mismatched']}; "
          f"p99 {stormy['p99_s']} s with kills vs {calm['p99_s']} s without -> {out}")
    exact = all(result[k] == 0 and calm[k] == 0 for k in ("lost", "duplicated", "mismatched"))
    return 0 if exact else 1


def main(argv: list[str] | None = None) -> int:
    return run_bench("chaos", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
