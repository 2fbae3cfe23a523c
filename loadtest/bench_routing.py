"""Decision time of each routing policy at 64, 1,024 and 4,096 fake replicas: the scan every
decision used to be (`select` over every `LoadReport`) against the `LoadIndex` (`choose`), in one run.

`shunter bench routing [--replicas 64 1024 4096] [--decisions 20000] [--out PATH]`
Each replica holds some cached prefixes (so prefix_aware walks a real index) and random loads. A
decision is what the router does per request besides hashing: the policy's choice, then counting
the request as pending on the chosen replica (`reserve`), and, as replicas report all the time, one
replica's fresh stats; with the index each of those changes is also told to it (`update`). Prompt
hashing is timed apart (the router does it once per request for prefix_aware) and added to
prefix_aware's rate. Prints a table; writes JSON to `loadtest/results/` and a plot beside it.
"""
from __future__ import annotations

import argparse
import json
import math
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
    """`n` replicas with random loads, each holding a few of `n / 4` prefixes (so each prefix has
    about a dozen holders at any size, as prefix-aware routing keeps them: a prefix goes where it
    is cached until that replica is too loaded), and 256 requests over those prefixes."""
    from shunter.replica.block_hash import block_hashes
    from shunter.replica.engine_protocol import CacheEvent as Event
    from shunter.router.routing import LoadReport, PrefixIndex, RoutingRequest

    rng = random.Random(seed)
    index = PrefixIndex()
    prefixes = [[rng.randrange(1, 30000) for _ in range(16 * 32)] for _ in range(max(16, n // 4))]
    chains = [block_hashes(p, 16) for p in prefixes]
    reports = []
    for i in range(n):
        rid = f"r{i}"
        for chain in rng.sample(chains, 3):
            index.apply(rid, [Event("stored", h) for h in chain[: rng.randrange(4, 32)]])
        reports.append(LoadReport(rid, kv_blocks_in_use=rng.randrange(0, 400), blocks_expected_growth=rng.randrange(0, 50)))
    requests = []
    for j in range(256):
        prompt = rng.choice(prefixes) + [rng.randrange(1, 30000) for _ in range(40)]
        hashes = block_hashes(prompt, 16)
        requests.append(RoutingRequest(f"q{j}", hashes, len(hashes), len(hashes) + 4))
    return index, reports, requests, prefixes


def time_policy(name: str, n: int, decisions: int, indexed: bool) -> list[float]:
    """Per-decision seconds, measured in batches of 100 to keep the timer's own cost out."""
    from shunter.router.routing import LoadIndex, make_routing_policy, reserve

    index, reports, requests, _ = build(n)
    policy = make_routing_policy(name, index) if name == "prefix_aware" else make_routing_policy(name)
    loads = LoadIndex(reports)
    rng = random.Random(1)
    polled = [(reports[rng.randrange(n)], rng.randrange(0, 400)) for _ in range(1024)]  # drawn before the clock
    by_id = {r.replica_id: r for r in reports}
    samples = []
    batch = 100
    for b in range(max(1, decisions // batch)):
        start = time.perf_counter()
        for k in range(batch):
            i = b * batch + k
            report, in_use = polled[i % len(polled)]
            report.kv_blocks_in_use, report.pending_blocks = in_use, 0  # a replica's poll
            request = requests[i % len(requests)]
            if indexed:
                loads.update(report)
                chosen = by_id[policy.choose(loads, request)]
                reserve(chosen, request)
                loads.update(chosen)
            else:
                chosen = by_id[policy.select(reports, request)]
                reserve(chosen, request)
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
    parser.add_argument("--replicas", type=int, nargs="+", default=[64, 1024, 4096])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=None, help="JSON result path (default: loadtest/results/)")


def run(args: argparse.Namespace) -> int:
    from shunter.router.routing import REGISTRY

    hashing = time_hashing(repeats=max(10, min(2000, args.decisions // 10))) * 1e6
    print(f"prompt hashing (552 tokens, 34 blocks): {hashing:.1f} µs per request (prefix_aware only)")
    print(f"{'policy':<14}{'':<7}" + "".join(f"{n:>10} repl" for n in args.replicas) + "   (p50 µs per decision)")
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in sorted(REGISTRY):
        for way in ("scan", "index"):
            row = [statistics.median(time_policy(name, n, args.decisions, way == "index")) * 1e6 for n in args.replicas]
            table.setdefault(name, {})[way] = {str(n): v for n, v in zip(args.replicas, row)}
            print(f"{name:<14}{way:<7}" + "".join(f"{v:>15.2f}" for v in row))
    rates = {name: {way: {n: 1e6 / (us + (hashing if name == "prefix_aware" else 0)) for n, us in by_n.items()}
                    for way, by_n in ways.items()} for name, ways in table.items()}
    lo, hi = str(min(args.replicas)), str(max(args.replicas))
    growth = {name: ways["index"][hi] / ways["index"][lo] for name, ways in table.items()}
    log_growth = math.log(int(hi)) / math.log(int(lo))
    for name in ("least_load", "prefix_aware"):
        mid = "1024" if "1024" in rates[name]["index"] else hi
        print(f"{name}: {rates[name]['index'][mid]:,.0f} decisions/s at {mid} replicas with the index"
              f"{' (hashing included)' if name == 'prefix_aware' else ''}, {rates[name]['scan'][mid]:,.0f} scanning; "
              f"time per decision {growth[name]:.2f}x from {lo} to {hi} replicas (log grows {log_growth:.2f}x)")
    result = {
        "bench": "routing", "command": args._invocation,
        "unit": "p50 µs per decision (policy + reserve + one replica's report; index: and its updates)",
        "decisions": args.decisions, "policies": table, "prompt_hashing_us": hashing,
        "decisions_per_s": rates, "index_growth": growth, "log_growth": log_growth,
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_average": os.getloadavg()[0], "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = args.out or RESULTS / "bench_routing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    _plot(table, args.replicas, hashing, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png').name}")
    return 0


def _plot(table: dict, replicas: list[int], hashing: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, ways in sorted(table.items()):
        for way, style in (("scan", "--"), ("index", "-")):
            line = ax.plot(replicas, [ways[way][str(n)] for n in replicas], style, marker="o", markersize=3,
                           label=f"{name} ({way})")
            if way == "scan":
                color = line[0].get_color()
            else:
                line[0].set_color(color)
    ax.axhline(hashing, color="grey", linestyle=":", label="prompt hashing (prefix_aware)")
    ax.axhline(50, color="red", linewidth=0.8, label="20,000 decisions/s")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("replicas")
    ax.set_ylabel("µs per decision (p50)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    return run_bench("routing", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
