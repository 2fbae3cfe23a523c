"""`shunter bench migration`: what moving a running request costs it and its neighbours, live
(pre-copy) against stop-and-copy, at growing contexts, in one run.

Two replicas behind a Router (in this process, or Ray actors with `--ray`: then the KV goes
through Ray's object store, as it does in `shunter serve`). For each context length the long
prompt is prefilled once on the source, so that each sample's request (the same prompt with
another last token) starts from a prefix-cache hit; `--others` short requests decode on the
source beside it. After the request has streamed a few tokens the router moves it to the
other replica, and the client's side records, per sample:

- downtime: from the last token the source streamed to the first the target streamed;
- the migration's total time (`Router.migrate`), its stages, and the KV moved (blocks x bytes);
- the source's slowdown: the other requests' mean gap between tokens while the migration ran,
  over their mean gap in the same span of time just before it.

Routing is prefix-aware with the imbalance fallback off, so every request of a context lands
where its prefix is (the source). Greedy and EOS ignored: every sample makes the same tokens.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shunter.loadtest.bench_cli import run_bench

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("stop-and-copy", "live")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="a real-shaped model (random:llama-3.2-1b on a GPU)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 8192],
                        help="context lengths in tokens (each within the model's max_position_embeddings)")
    parser.add_argument("--samples", type=int, default=5, help="migrations per mode and context (medians kept)")
    parser.add_argument("--others", type=int, default=4, help="short requests decoding on the source meanwhile")
    parser.add_argument("--move-after", type=int, default=8, help="tokens the request streams before it moves")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads per replica (CPU)")
    parser.add_argument("--ray", action="store_true", help="replicas as Ray actors (KV through the object store)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default: loadtest/results/bench_migration_<model>_<device>.json; a PNG beside it)")


@dataclass
class Sample:
    mode: str
    context: int
    downtime_s: float
    total_s: float
    stages: int
    blocks_staged: int
    blocks_at_commit: int
    bytes_moved: int
    normal_gap_s: float  # the request's median gap between tokens before the move
    source_slowdown: float  # others' mean gap during the move / in the span just before


@dataclass
class Stream:
    times: list[float] = field(default_factory=list)
    replicas: list[str] = field(default_factory=list)


def _engine_config(args: argparse.Namespace, max_context: int):
    from shunter.replica.engine_config import EngineConfig

    blocks = 2 * (max_context + 2048) // 16 + 64  # the long request twice (the source's copy and its cache) + others
    return EngineConfig(model=args.model, device=args.device, dtype=args.dtype, num_kv_blocks=blocks,
                        max_num_seqs=args.others + 4, max_num_batched_tokens=2048, num_threads=args.num_threads,
                        max_model_len=max_context + 1024, seed=0)


def _clients(args: argparse.Namespace, config) -> list:
    if not args.ray:
        from shunter.replica.engine import Engine
        from shunter.router.core import LocalReplicaClient

        return [LocalReplicaClient(f"r{i}", lambda: Engine(config)) for i in range(2)]
    import ray

    from shunter.router.cluster import RayReplicaClient, spawn

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return [RayReplicaClient(f"r{i}", spawn(f"r{i}", config, num_cpus=1)) for i in range(2)]


async def _stream(router, rid: str, prompt: list[int], max_tokens: int, out: Stream, moved: asyncio.Event | None,
                  at: int = 0) -> None:
    from shunter.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    n = 0
    async for delta in router.generate(rid, prompt, params):
        now = time.perf_counter()
        for _ in delta.token_ids:
            out.times.append(now)
            out.replicas.append(delta.replica_id)
        n += len(delta.token_ids)
        if moved is not None and n >= at and not moved.is_set():
            moved.set()


def _gaps(times: list[float], start: float, end: float) -> list[float]:
    """Gaps between consecutive tokens that overlap [start, end] (a gap that spans a short
    window is what the window cost)."""
    return [b - a for a, b in zip(times, times[1:]) if b >= start and a <= end]


async def _sample(router, mode: str, context: int, prompt: list[int], k: int, args: argparse.Namespace) -> Sample:
    from shunter.router.core import MigrationSettings

    router.config.migration = MigrationSettings(mode=mode)
    rid = f"{mode}-{context}-{k}"
    long_prompt = prompt[:-1] + [100 + k]  # a prefix hit on all of it but the last block
    request, others = Stream(), [Stream() for _ in range(args.others)]
    ready = asyncio.Event()
    max_tokens = args.move_after + 64
    tasks = [asyncio.create_task(_stream(router, f"{rid}-o{i}", prompt[:64] + [200 + i] * 8, 4 * max_tokens, o, None))
             for i, o in enumerate(others)]
    main = asyncio.create_task(_stream(router, rid, long_prompt, max_tokens, request, ready, args.move_after))
    await ready.wait()
    source = router.journal.get(rid).replica_id
    target = next(r for r in router.slots if r != source)
    started = time.perf_counter()
    assert await router.migrate(rid, target), f"migration of {rid} did not commit"
    ended = time.perf_counter()
    await main
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    record = router.migration_log[-1]
    last_src = max(t for t, r in zip(request.times, request.replicas) if r == source)
    first_dst = min(t for t, r in zip(request.times, request.replicas) if r == target)
    before = [b - a for a, b, r in zip(request.times, request.times[1:], request.replicas[1:]) if r == source]
    during = [g for o in others for g in _gaps(o.times, started, ended)]
    span = max(ended - started, 0.5)
    prior = [g for o in others for g in _gaps(o.times, started - span, started - 1e-9)]
    slowdown = statistics.mean(during) / statistics.mean(prior) if during and prior else float("nan")
    return Sample(mode, context, first_dst - last_src, ended - started, record.stages, record.blocks_staged,
                  record.blocks_at_commit, record.bytes_moved,
                  statistics.median(before) if before else float("nan"), slowdown)


async def _run(args: argparse.Namespace, progress) -> tuple[list[Sample], dict]:
    from shunter.router.core import Router, RouterConfig

    config = _engine_config(args, max(args.contexts))
    clients = _clients(args, config)
    router = Router(clients, RouterConfig(rebalance=False, routing="prefix_aware", poll_wait_s=0.05,
                                          routing_settings={"abs_threshold": 10**9}))
    await router.start()
    info = router.info
    samples: list[Sample] = []
    try:
        for context in args.contexts:
            prompt = [(7 * i) % (info.limits.vocab_size - 300) + 300 for i in range(context)]
            for _ in range(2):  # prefill it on one replica, and the short prompts' prefix with it
                await _stream(router, f"warm-{context}-{_}", prompt[:-1] + [99], 1, Stream(), None)
            for k in range(args.samples):
                for mode in MODES:
                    samples.append(await _sample(router, mode, context, prompt, k, args))
                    progress()
    finally:
        await router.stop()
        for c in clients:
            if hasattr(c, "kill"):
                c.kill()
    return samples, {"block_bytes": info.limits.kv_block_bytes, "block_size": info.limits.block_size}


def summarize(samples: list[Sample]) -> list[dict]:
    rows = []
    for context in sorted({s.context for s in samples}):
        for mode in MODES:
            these = [s for s in samples if s.context == context and s.mode == mode]
            med = lambda f: statistics.median(getattr(s, f) for s in these)  # noqa: E731
            rows.append({"context": context, "mode": mode, "samples": len(these), "downtime_p50_ms": 1e3 * med("downtime_s"),
                         "downtime_max_ms": 1e3 * max(s.downtime_s for s in these), "total_p50_ms": 1e3 * med("total_s"),
                         "stages_p50": med("stages"), "mb_moved_p50": med("bytes_moved") / 1e6,
                         "blocks_at_commit_p50": med("blocks_at_commit"), "normal_gap_p50_ms": 1e3 * med("normal_gap_s"),
                         "source_slowdown_p50": med("source_slowdown")})
    return rows


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, style in zip(MODES, ("o--", "s-")):
        points = [(r["context"], r["downtime_p50_ms"]) for r in rows if r["mode"] == mode]
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=f"{mode} (p50)")
    normal = [(r["context"], r["normal_gap_p50_ms"]) for r in rows if r["mode"] == "live"]
    ax.plot([p[0] for p in normal], [p[1] for p in normal], ":", color="grey", label="a step (its normal gap)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("downtime as the client sees it (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    total = len(args.contexts) * args.samples * len(MODES)
    with tqdm(total=total, desc="migrations", disable=not sys.stderr.isatty()) as bar:
        samples, meta = asyncio.run(_run(args, bar.update))
    rows = summarize(samples)
    for r in rows:
        print(f"{r['context']:>6} tokens  {r['mode']:<13}  downtime p50 {r['downtime_p50_ms']:8.1f} ms  "
              f"total {r['total_p50_ms']:8.1f} ms  stages {r['stages_p50']:.0f}  {r['mb_moved_p50']:7.1f} MB  "
              f"source slowdown {r['source_slowdown_p50']:.2f}x  (a step: {r['normal_gap_p50_ms']:.1f} ms)")
    longest = max(args.contexts)
    p50 = {(r["context"], r["mode"]): r["downtime_p50_ms"] for r in rows}
    ratios = {"live_longest_over_shortest": p50[(longest, "live")] / p50[(min(args.contexts), "live")],
              "stop_and_copy_over_live_at_longest": p50[(longest, "stop-and-copy")] / p50[(longest, "live")]}
    print(f"live downtime at {longest} tokens / at {min(args.contexts)}: {ratios['live_longest_over_shortest']:.2f}x "
          f"(goal <= 1.5x); stop-and-copy / live at {longest}: {ratios['stop_and_copy_over_live_at_longest']:.1f}x "
          "(goal >= 10x)")
    name = args.model.replace(":", "-").replace("/", "-")
    out = args.out or RESULTS / f"bench_migration_{name}_{args.device}{'_ray' if args.ray else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": getattr(args, "_invocation", "shunter bench migration"),
                               "model": args.model, "device": args.device, "transport": "ray" if args.ray else "in-process",
                               **meta, "rows": rows, "ratios": ratios,
                               "samples": [s.__dict__ for s in samples]}, indent=1) + "\n")
    _plot(rows, out.with_suffix(".png"), f"{args.model} on {args.device}, "
                                         f"{'Ray object store' if args.ray else 'in-process'}, {args.others} others decoding")
    print(f"wrote {out} and {out.with_suffix('.png').name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_bench("migration", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
