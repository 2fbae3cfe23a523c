"""SIGTERM on `shunter serve`'s serving loop, in a process of its own, without Ray.

In-process fake replicas behind the real `serve()` (signal handlers, drain, the printed verdict):
a stream that ends within --drain-timeout finishes whole, and so does one queued behind it (it
gets the slot the first frees); one that cannot finish is ended at the deadline with
finish_reason "shutdown", and the last line says so.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading

import grpc

from shunter.proto import generation_pb2 as pb
from shunter.proto import generation_pb2_grpc as pb_grpc
from tests.conftest import REPO
from tests.router.test_serve_cli import free_port

SERVER = """
import argparse, asyncio, sys
from shunter.router.serve import cli as serve_cli
from shunter.router.core.replica_client import LocalReplicaClient
from tests.fakes import FakeEngine
parser = argparse.ArgumentParser()
serve_cli.add_arguments(parser)
args = parser.parse_args(sys.argv[1:])
sys.exit(asyncio.run(serve_cli.serve(args, [LocalReplicaClient("replica-0", lambda: FakeEngine(step_time=0.02))])))
"""


def request(max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[4] * 10),
                              sampling=pb.SamplingOptions(max_tokens=max_tokens, ignore_eos=True))


def read(stub, max_tokens: int, out: dict) -> None:
    out.update(tokens=0, finish=None, code=None)
    try:
        for chunk in stub.Generate(request(max_tokens), timeout=60):
            out["tokens"] += len(chunk.token_ids)
            out["finish"] = chunk.finish_reason or out["finish"]
    except grpc.RpcError as e:
        out["code"] = e.code()


def test_sigterm_finishes_what_fits_ends_the_rest_and_says_so():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, "--port", str(port), "--model", "fake:ids",
                             "--max-in-flight", "2", "--max-queued", "1", "--drain-timeout", "1.5"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "serving" in proc.stdout.readline(), proc.stderr.read()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GenerationStub(channel)
            results = {"short": {}, "long": {}, "queued": {}}
            threads = [threading.Thread(target=read, args=(stub, n, results[name]))
                       for name, n in (("short", 20), ("long", 2000), ("queued", 5))]
            for t in threads:
                t.start()
            _wait_for_queue(stub)
            proc.send_signal(signal.SIGTERM)
            for t in threads:
                t.join(60)
        assert results["short"] == {"tokens": 20, "finish": "length", "code": None}
        assert results["long"]["finish"] == "shutdown" and results["long"]["tokens"] < 2000
        assert results["queued"] == {"tokens": 5, "finish": "length", "code": None}
        assert proc.wait(30) == 0
        out = proc.stdout.read()
        assert "draining 2 requests" in out
        assert "after --drain-timeout 1.5 s, 1 requests still running or queued were ended" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def _wait_for_queue(stub) -> None:
    for _ in range(200):
        counters = stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=5).counters
        if (counters.in_flight, counters.queued) == (2, 1):
            return
        threading.Event().wait(0.02)
    raise AssertionError(f"the requests never all arrived: {counters}")
