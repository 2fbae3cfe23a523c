"""`shunter serve` as users run it (joining the session's Ray cluster), `shunter status` (with one
large-cache replica), the metrics pages (the frontend's, and each replica actor's own), SIGTERM drain."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading

import grpc
import pytest

from shunter.proto import generation_pb2 as pb
from shunter.proto import generation_pb2_grpc as pb_grpc
from tests.conftest import REPO
from tests.fakes import reference_output
from tests.router.prometheus_page import Page

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_status_metrics_and_sigterm_drain(ray_cluster):
    port, metrics_port = free_port(), free_port()
    address = ray_cluster.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [sys.executable, "-m", "shunter.cli", "serve", "--address", address, "--port", str(port), "--replicas", "2",
         "--num-cpus-per-replica", "0.5", "--model", "fake:ids", "--large-cache-replicas", "1",
         "--size-threshold-blocks", "4", "--metrics-port", str(metrics_port), "--replica-metrics-port-base", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving" in line, line + proc.stderr.read()
        assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in line
        status = subprocess.run([sys.executable, "-m", "shunter.cli", "status", "--address", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "replica-0" in status.stdout and "replica-1" in status.stdout
        lines = status.stdout.splitlines()
        head = next(line for line in lines if line.startswith("replica "))
        rows = {line.split()[0]: line for line in lines}

        def cell(replica: str, column: str) -> str:  # the table pads each column to its header's start
            return rows[replica][head.index(f"  {column}") + 2:].split("  ")[0].strip()

        assert cell("replica-0", "role") == "large" and cell("replica-1", "role") == "-"  # the role the flags gave
        assert "size threshold 4 blocks" in status.stdout and f"metrics port {metrics_port}" in status.stdout
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.GenerationStub(channel)
        list(stub.Generate(pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[6] * 10),
                                              sampling=pb.SamplingOptions(max_tokens=5)), timeout=60))
        # Each replica actor serves its own page (on a free port, as --replica-metrics-port-base 0 asks):
        # together they looked up the one prompt; the frontend's page has the same count and the request.
        replica_pages = [Page.scrape(f"http://127.0.0.1:{cell(r, 'metrics')}/metrics") for r in ("replica-0", "replica-1")]
        assert sum(p.get("shunter:prefix_cache_queries_total") for p in replica_pages) == 10
        assert [list(p.per_replica("shunter:num_requests_running")) for p in replica_pages] == [["replica-0"],
                                                                                                  ["replica-1"]]
        frontend = Page.scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert frontend.get("shunter:prefix_cache_queries_total") == 10
        assert frontend.get("shunter:time_to_first_token_seconds_count", model_name="fake:ids") == 1
        req = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[4] * 10),
                                 sampling=pb.SamplingOptions(max_tokens=300, ignore_eos=True))
        stream = stub.Generate(req, timeout=60)
        first = next(stream)
        result = {}
        reader = threading.Thread(target=lambda: result.setdefault("rest", list(stream)))
        reader.start()
        proc.send_signal(signal.SIGTERM)
        reader.join(60)
        tokens = list(first.token_ids) + [t for c in result["rest"] for t in c.token_ids]
        assert tokens == reference_output([4] * 10, 300, ignore_eos=True)  # the running stream finished
        assert proc.wait(60) == 0
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
