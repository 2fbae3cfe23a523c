"""Decision time of each routing policy at 8, 64 and 1,024 fake replicas.

`python -m shunter.loadtest.bench_routing [--replicas 8 64 1024] [--decisions 20000] [--out PATH]`
Each replica holds some cached prefixes (so prefix_aware walks a real index) and random loads;
a decision is one `select()` over fresh `LoadReport`s; reports are built once per batch, as the
router keeps them between load updates. Prompt hashing is timed separately: the router does it
once per request whatever the policy. Prints a table; writes JSON to `loadtest/results/`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from shunter.loadtest.bench_cli import run_bench

RESULTS = Path(__file__).resolve().parent / "results"


def build(n: int, seed: int = 0):
    from shunter.replica.block_hash import block_hashes
    from shunter.replica.engine_protocol import CacheEvent as Event
    from shunter.router.routing import LoadReport, RoutingRequest
    from shunter.router.routing import PrefixIndex

    rng = random.Random(seed)
    index = PrefixIndex()
    prefixes = [[rng.randrange(1, 30000) for _ in range(16 * 32)] for _ in range(16)]
    chains = [block_hashes(p, 16) for p in prefixes]
    reports = []
    for i in range(n):
        rid = f"r{i}"
        for chain in rng.sample(chains, 3):
            index.apply(rid, [Event("stored", h) for h in chain[: rng.randrange(4, 32)]])
        reports.append(LoadReport(rid, kv_blocks_in_use=rng.randrange(0, 400), blocks_expected_growth=rng.randrange(0, 50)))
    requests = []
    for j in range(256):
        prompt = prefixes[j % len(prefixes)] + [rng.randrange(1, 30000) for _ in range(40)]
        hashes = block_hashes(prompt, 16)
        requests.append(RoutingRequest(f"q{j}", hashes, len(hashes), len(hashes) + 4))
    return index, reports, requests, prefixes


def time_policy(name: str, n: int, decisions: int) -> list[float]:
    """Per-decision seconds, measured in batches of 100 to keep the timer's own cost out."""
    from shunter.router.routing import make_routing_policy

    index, reports, requests, _ = build(n)
    policy = make_routing_policy(name, index) if name == "prefix_aware" else make_routing_policy(name)
    samples = []
    batch = 100
    for b in range(max(1, decisions // batch)):
        start = time.perf_counter()
        for k in range(batch):
            policy.select(reports, requests[(b * batch + k) % len(requests)])
        samples.append((time.perf_counter() - start) / batch)
    return samples


def time_hashing(prompt_tokens: int = 552, repeats: int = 2000) -> float:
    from shunter.replica.block_hash import block_hashes

    prompt = list(range(prompt_tokens))
    start = time.perf_counter()
    for _ in range(repeats):
        block_hashes(prompt, 16)
    return (time.perf_counter() - start) / repeats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", type=int, nargs="+", default=[8, 64, 1024])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=None, help="JSON result path (default: loadtest/results/)")


def run(args: argparse.Namespace) -> int:
    from shunter.router.routing import REGISTRY

    print(f"{'policy':<14}" + "".join(f"{n:>12} repl" for n in args.replicas) + "   (p50 µs per decision)")
    table: dict[str, dict[str, float]] = {}
    for name in sorted(REGISTRY):
        row = [statistics.median(time_policy(name, n, args.decisions)) * 1e6 for n in args.replicas]
        table[name] = {str(n): v for n, v in zip(args.replicas, row)}
        print(f"{name:<14}" + "".join(f"{v:>17.2f}" for v in row))
    hashing = time_hashing(repeats=max(10, min(2000, args.decisions // 10))) * 1e6
    print(f"prompt hashing (552 tokens, 34 blocks): {hashing:.1f} µs per request")
    result = {
        "bench": "routing", "command": args._invocation,
        "unit": "p50 µs per decision", "decisions": args.decisions, "policies": table, "prompt_hashing_us": hashing,
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = args.out or RESULTS / "bench_routing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_bench("routing", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
