"""What the OpenAI HTTP gateway adds over gRPC: TTFT, gaps between chunks and per-chunk delivery, same load.

`python -m shunter.loadtest.bench_http [--requests 100] [--rounds 2] [--concurrency 1 8] [--step-ms 5]`
One server (router + gRPC frontend + HTTP gateway on one event loop, as `shunter serve
--http-port` runs them) over in-process fake replicas (`fake:bytes:STEP_MS`: a byte tokenizer,
STEP_MS of sleep a step, one ASCII character a token, so a chunk's text length is its token
count). The same requests (token-id prompts, greedy, `max_tokens` each, EOS ignored) go over
both doors in alternating rounds, from `concurrency` client threads each holding one connection
(a blocking gRPC stub; stdlib `http.client` reading the server-sent events line by line: no
client library's own per-chunk cost on either side). The clients run in a process of their own,
as real ones do, so their parsing does not take the server's GIL. The replicas stamp when the
router handed them each request and when the engine made each token (`time.monotonic`, one clock
for every process on Linux), which splits a client's TTFT into the serving path (in: client send
to replica submit; out: first token made to client receipt) and the engine (waiting for the step
under way, then a step). Only the path is the front door's doing: the engine part swings with
where a request lands in the step cycle, which in a closed loop follows each client's own
turnaround, so the raw client TTFT is reported but compared only at concurrency 1. A chunk's
delivery (receipt minus the making of its last token) is the path's latency per chunk.
Also recorded: the server process's CPU per streamed chunk (every thread; each request's own
work spread over its chunks). Writes JSON to `loadtest/results/`.

With `--target GRPC_PORT HTTP_PORT` the same client loads a running `shunter serve --http-port`
on loopback instead (any model: tokens are counted by `continuous_usage_stats`): client-side
numbers only (TTFT, inter-token latency, throughput), shaped to set beside a third-party load
tool's report on the same load.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from shunter.loadtest.bench_cli import run_bench
from shunter.mathutil import percentile
from shunter.router.core import LocalReplicaClient
from shunter.testing.fake_engine import FakeEngine

RESULTS = Path(__file__).resolve().parent / "results"
WARMUP = 10
SCRIPT = [b + 3 for b in b"the quick brown fox jumps over the lazy dog "]  # ASCII: one character a token
MODEL = "fake:bytes"


class StampedEngine(FakeEngine):
    """The fake engine, recording when it made each request's output tokens (time.monotonic)."""

    def __init__(self, step_time: float) -> None:
        super().__init__(step_time=step_time, with_tokenizer=True, script=SCRIPT)
        self.made: dict[str, list[float]] = {}

    def step(self):
        outs = super().step()
        now = time.monotonic()
        for out in outs:
            self.made.setdefault(out.request_id, []).extend([now] * len(out.new_token_ids))
        return outs


class StampedClient(LocalReplicaClient):
    """An in-process replica that records when the router submitted each request to it."""

    def __init__(self, replica_id: str, step_time: float, submitted: dict[str, float]) -> None:
        super().__init__(replica_id, lambda: StampedEngine(step_time))
        self.submitted = submitted

    async def submit(self, request_id: str, prompt_token_ids: list[int], params) -> None:
        self.submitted[request_id] = time.monotonic()
        await super().submit(request_id, prompt_token_ids, params)


@dataclass
class Trace:
    """One request as its client saw it: when it was sent, and (receipt time, tokens so far) per chunk."""

    request_id: str = ""
    sent: float = 0.0
    chunks: list[tuple[float, int]] = field(default_factory=list)


def grpc_request(stub, prompt: list[int], max_tokens: int, rid: str) -> Trace:
    from shunter.proto import generation_pb2 as pb

    req = pb.GenerateRequest(request_id=rid, prompt_token_ids=pb.TokenIds(ids=prompt),
                             sampling=pb.SamplingOptions(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    trace, tokens = Trace(rid, time.monotonic()), 0
    for chunk in stub.Generate(req):
        tokens += len(chunk.token_ids)
        trace.chunks.append((time.monotonic(), tokens))
    return trace


def http_request(conn: http.client.HTTPConnection, prompt: list[int], max_tokens: int, by_usage: bool) -> Trace:
    """One streamed completion; a chunk's tokens are its text's length (one ASCII character a token
    from `StampedEngine`), or with `by_usage` the server's running usage (any model)."""
    request = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    if by_usage:
        request["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    body = json.dumps(request)
    trace, tokens = Trace(sent=time.monotonic()), 0
    conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
    while True:
        line = response.readline()
        now = time.monotonic()
        if not line or line == b"data: [DONE]\n":
            break
        if line.startswith(b"data: "):
            chunk = json.loads(line[6:])
            if not chunk["choices"]:  # the closing usage chunk
                continue
            trace.request_id = chunk["id"]
            tokens = chunk["usage"]["completion_tokens"] if by_usage else tokens + len(chunk["choices"][0]["text"])
            trace.chunks.append((now, tokens))
    response.read()
    return trace


def run_batch(ports: tuple[int, int], door: str, concurrency: int, requests: int, max_tokens: int,
              tag: str, by_usage: bool = False) -> list[Trace]:
    """In the client process: `requests` requests over `door` (ports: gRPC, HTTP) from `concurrency`
    threads, each with its own connection."""
    import grpc

    from shunter.proto import generation_pb2_grpc as pb_grpc

    counter = iter(range(requests))
    lock = threading.Lock()
    channel = grpc.insecure_channel(f"127.0.0.1:{ports[0]}")
    stub = pb_grpc.GenerationStub(channel)

    def worker(w: int) -> list[Trace]:
        out = []
        conn = http.client.HTTPConnection("127.0.0.1", ports[1]) if door == "http" else None
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            prompt = [3 + (i * 7 + k) % 250 for k in range(32)]
            if door == "http":
                out.append(http_request(conn, prompt, max_tokens, by_usage))
            else:
                out.append(grpc_request(stub, prompt, max_tokens, f"{tag}-{i}"))
        if conn is not None:
            conn.close()
        return out

    with ThreadPoolExecutor(concurrency) as pool:
        traces = [t for batch in pool.map(worker, range(concurrency)) for t in batch]
    channel.close()
    return traces


def path_ttft(t: Trace, submitted: dict[str, float], made: dict[str, list[float]]) -> float:
    """The serving path's part of a TTFT: client send to replica submit, first token made to receipt."""
    return (submitted[t.request_id] - t.sent) + (t.chunks[0][0] - made[t.request_id][0])


def measure(traces: list[Trace], submitted: dict[str, float], made: dict[str, list[float]]) -> dict[str, float]:
    """p50/p99 (ms) of the client's TTFT and of its serving-path part, the gap between chunks, and
    each chunk's delivery after its last token was made."""
    ttft, gaps, delivery, per_chunk = [], [], [], []
    path = [path_ttft(t, submitted, made) for t in traces]
    for t in traces:
        stamps = made[t.request_id]
        ttft.append(t.chunks[0][0] - t.sent)
        previous_tokens = 0
        for i, (at, tokens) in enumerate(t.chunks):
            delivery.append(at - stamps[tokens - 1])
            per_chunk.append(tokens - previous_tokens)
            previous_tokens = tokens
            if i:
                gaps.append(at - t.chunks[i - 1][0])
    ms = lambda xs, q: round(percentile(xs, q) * 1e3, 4)  # noqa: E731
    return {"requests": len(traces), "chunks": len(delivery),
            "tokens_per_chunk": round(sum(per_chunk) / len(per_chunk), 3),
            "ttft_p50_ms": ms(ttft, 0.5), "ttft_p99_ms": ms(ttft, 0.99),
            "path_ttft_p50_ms": ms(path, 0.5), "path_ttft_p99_ms": ms(path, 0.99), "gap_p50_ms": ms(gaps, 0.5),
            "gap_p99_ms": ms(gaps, 0.99), "delivery_p50_ms": ms(delivery, 0.5), "delivery_p99_ms": ms(delivery, 0.99)}


def client_numbers(traces: list[Trace], wall_s: float) -> dict[str, float]:
    """What a load tool reports, from the client alone: TTFT, inter-token latency ((last chunk - first
    chunk) / (tokens - 1) per request), requests and output tokens per second."""
    ttft = [t.chunks[0][0] - t.sent for t in traces]
    itl = [(t.chunks[-1][0] - t.chunks[0][0]) / (t.chunks[-1][1] - 1) for t in traces if t.chunks[-1][1] > 1]
    ms = lambda xs, q: round(percentile(xs, q) * 1e3, 3)  # noqa: E731
    mean = lambda xs: round(sum(xs) / len(xs) * 1e3, 3)  # noqa: E731
    tokens = sum(t.chunks[-1][1] for t in traces)
    return {"requests": len(traces), "wall_s": round(wall_s, 3), "requests_per_s": round(len(traces) / wall_s, 2),
            "output_tokens_per_s": round(tokens / wall_s, 1), "ttft_mean_ms": mean(ttft), "ttft_p50_ms": ms(ttft, 0.5),
            "ttft_p95_ms": ms(ttft, 0.95), "ttft_p99_ms": ms(ttft, 0.99), "itl_mean_ms": mean(itl),
            "itl_p50_ms": ms(itl, 0.5), "itl_p95_ms": ms(itl, 0.95)}


def run_target(args: argparse.Namespace) -> int:
    """Load a running server (`--target GRPC_PORT HTTP_PORT`) over both doors; client-side numbers."""
    ports = tuple(args.target)
    client_process = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    levels = []
    try:
        for concurrency in args.concurrency:
            traces: dict[str, list[Trace]] = {"grpc": [], "http": []}
            wall = {"grpc": 0.0, "http": 0.0}
            for r in range(args.rounds):
                for door in (("grpc", "http") if r % 2 == 0 else ("http", "grpc")):
                    tag, batch = f"t{concurrency}r{r}", (ports, door, concurrency)
                    client_process.submit(run_batch, *batch, WARMUP, args.max_tokens, tag + "w", True).result()
                    started = time.monotonic()
                    traces[door] += client_process.submit(run_batch, *batch, args.requests, args.max_tokens, tag,
                                                          True).result()
                    wall[door] += time.monotonic() - started
            level = {"concurrency": concurrency, **{door: client_numbers(traces[door], wall[door]) for door in traces}}
            for door in traces:
                print(f"concurrency {concurrency} {door}: {level[door]}")
            levels.append(level)
    finally:
        client_process.shutdown()
    result = {"bench": "http", "command": args._invocation, "target": list(ports), "max_tokens": args.max_tokens,
              "requests": args.requests, "rounds": args.rounds, "levels": levels, "host": platform.node(),
              "cpus": os.cpu_count(), "load_average": os.getloadavg(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = args.out or RESULTS / "bench_http_target.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _made(clients: list[StampedClient]) -> dict[str, list[float]]:
    return {rid: stamps for c in clients for rid, stamps in c.core.engine.made.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=100, help="measured requests per door per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating which door goes first")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="client threads (streams at once)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--step-ms", type=float, default=5.0, help="the fake engine's time a step")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON result path (default: loadtest/results/)")
    parser.add_argument("--target", type=int, nargs=2, default=None, metavar=("GRPC_PORT", "HTTP_PORT"),
                        help="load a running `shunter serve --http-port` on 127.0.0.1 instead (client-side numbers)")


def run(args: argparse.Namespace) -> int:
    if args.target:
        return run_target(args)
    from shunter.router.core import RouterConfig
    from shunter.testing.background import BackgroundServer

    submitted: dict[str, float] = {}
    clients = [StampedClient(f"r{i}", args.step_ms / 1e3, submitted) for i in range(args.replicas)]
    server = BackgroundServer(clients, RouterConfig(poll_wait_s=0.5, rebalance=False), model=MODEL, http=True)
    ports = (server.port, server.gateway.port)
    client_process = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    levels = []
    try:
        for concurrency in args.concurrency:
            traces: dict[str, list[Trace]] = {"grpc": [], "http": []}
            cpu = {"grpc": 0.0, "http": 0.0}
            per_round = []  # path TTFT p50 (ms) of each door in each round: the spread behind the whole run's
            for r in range(args.rounds):
                this_round = {}
                for door in (("grpc", "http") if r % 2 == 0 else ("http", "grpc")):
                    tag, batch = f"c{concurrency}r{r}", (ports, door, concurrency)
                    client_process.submit(run_batch, *batch, WARMUP, args.max_tokens, tag + "w").result()
                    started = time.process_time()  # this process is the server: its CPU, every thread
                    this_round[door] = client_process.submit(run_batch, *batch, args.requests, args.max_tokens,
                                                             tag).result()
                    cpu[door] += time.process_time() - started
                    traces[door] += this_round[door]
                made = _made(clients)
                per_round.append({door: round(percentile([path_ttft(t, submitted, made) for t in ts], 0.5) * 1e3, 4)
                                  for door, ts in this_round.items()})
            made = _made(clients)
            level = {"concurrency": concurrency, **{door: measure(t, submitted, made) for door, t in traces.items()}}
            for door in traces:
                level[door]["server_cpu_per_chunk_ms"] = round(cpu[door] / level[door]["chunks"] * 1e3, 4)
            level["http_minus_grpc_ms"] = {k: round(level["http"][k] - level["grpc"][k], 4)
                                           for k in level["grpc"] if k.endswith("_ms")}
            level["path_ttft_p50_ms_per_round"] = per_round
            levels.append(level)
    finally:
        client_process.shutdown()
        server.close()
    print(f"{args.replicas} in-process fake:bytes:{args.step_ms:g} replicas, {args.max_tokens} tokens a request, "
          f"{args.requests} requests per door x {args.rounds} rounds (ms; delivery = client receipt - token made)")
    for level in levels:
        print(f"concurrency {level['concurrency']}")
        for door in ("grpc", "http", "http_minus_grpc_ms"):
            m = level[door]
            print(f"  {door:>18}: TTFT p50 {m['ttft_p50_ms']:7.3f} p99 {m['ttft_p99_ms']:7.3f}   "
                  f"path TTFT p50 {m['path_ttft_p50_ms']:6.3f} p99 {m['path_ttft_p99_ms']:6.3f}   "
                  f"gap p50 {m['gap_p50_ms']:7.3f} p99 {m['gap_p99_ms']:7.3f}   "
                  f"delivery p50 {m['delivery_p50_ms']:7.3f} p99 {m['delivery_p99_ms']:7.3f}   "
                  f"server CPU/chunk {m['server_cpu_per_chunk_ms']:6.3f}"
                  + (f"   tokens/chunk {m['tokens_per_chunk']}" if "tokens_per_chunk" in m else ""))
        diffs = [round(r["http"] - r["grpc"], 3) for r in level["path_ttft_p50_ms_per_round"]]
        print(f"  path TTFT p50, http - grpc, per round: {diffs}")
    result = {"bench": "http", "command": args._invocation, "replicas": args.replicas, "step_ms": args.step_ms,
              "max_tokens": args.max_tokens, "requests": args.requests, "rounds": args.rounds, "levels": levels,
              "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "load_average": os.getloadavg(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = args.out or RESULTS / "bench_http.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_bench("http", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
