"""deploy/local-cluster.sh: a head and two worker nodes on this machine (separate `ray start`s on
their own ports and temp dir). `shunter serve --placement strict-spread` puts its 2 replicas (the
fake model) on different nodes, as ClusterStatus shows, and serves a stream; asking for more
nodes than there are, or for GPUs on a cluster with none, is a start-up error that says so (not a
wait). A worker node stopped under load loses no request (its streams fail over and finish with
the tokens of a plain run) and its replica comes back when the node returns. Then the script
stops only this cluster's processes."""
from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from shunter.proto import generation_pb2 as pb
from shunter.testing.fake_engine import reference_output
from shunter.testing.redis_server import free_port
from tests.conftest import REPO
from tests.router.test_redis_ray import Frontend

pytestmark = pytest.mark.slow
SCRIPT = REPO / "deploy" / "local-cluster.sh"


def ports_free(base: int) -> bool:
    """The head's port and the few node ports the script derives from it (not the worker ranges)."""
    for port in [base] + [base + 10 * k + i for k in range(3) for i in range(1, 8)]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@pytest.fixture(scope="module")
def cluster():
    base = next(p for p in (random.randrange(20000, 40000, 10) for _ in range(50)) if ports_free(p))
    folder = tempfile.mkdtemp(prefix="shc-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "SHUNTER_CLUSTER_DIR": folder, "SHUNTER_CLUSTER_PORT": str(base),
           "SHUNTER_CLUSTER_CPUS": "1", "PYTHON": sys.executable}
    try:
        started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"address: 127.0.0.1:{base}" in started.stdout
        yield f"127.0.0.1:{base}", env, lambda *argv: subprocess.run(["bash", str(SCRIPT), *argv], env=env,
                                                                     capture_output=True, text=True, timeout=120)
    finally:
        stopped = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr


def serve_fails(address: str, env: dict, *argv: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "shunter.cli", "serve", "--model", "fake:bytes:5", "--port",
                           str(free_port()), "--address", address, *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return proc.stderr


def test_strict_spread_puts_replicas_on_different_nodes(cluster):
    address, env, _ = cluster
    front = Frontend("--model", "fake:bytes:5", "--replicas", "2", "--placement", "strict-spread",
                     "--address", address)
    try:
        status = front.stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=10)
        nodes = [r.node for r in status.replicas]
        assert len(nodes) == 2 and len(set(nodes)) == 2, nodes
        assert all(re.fullmatch(r"[0-9.]+ \([0-9a-f]{8}\)", n) for n in nodes), nodes  # IP, start of node id
        chunks = list(front.stub.Generate(pb.GenerateRequest(prompt="abc", sampling=pb.SamplingOptions(max_tokens=4)), timeout=30))
        assert chunks
        front.proc.terminate()  # drains, then ends the job: Ray removes its replicas and placement group
        assert front.proc.wait(30) == 0
    finally:
        front.stop()
    # two workers (the head has no CPU for a replica): three replicas cannot each have a node
    assert "error: --placement strict-spread: 3 replicas need 3 nodes with 1 CPU each; the Ray cluster has 2 " \
           "such nodes (of 3)" in serve_fails(address, env, "--replicas", "3", "--placement", "strict-spread")
    assert "error: --num-gpus-per-replica 1: no node of the Ray cluster has a GPU (3 nodes" in \
        serve_fails(address, env, "--num-gpus-per-replica", "1")


def test_a_worker_node_lost_under_load_loses_no_request(cluster):
    """Two replicas spread over the two workers (one CPU each: the lost replica has nowhere else to
    go); six streams of 60 tokens at 50 ms a step; worker 1 stopped (its raylet and every process
    under it) once they run. Every stream finishes with the tokens of a plain run, some after
    failing over; the lost replica is unhealthy until the node is started again, then comes back."""
    address, _, script = cluster
    front = Frontend("--model", "fake:ids:50", "--replicas", "2", "--placement", "spread", "--address", address)
    try:
        def nodes() -> dict[str, tuple[str, bool]]:
            status = front.stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=10)
            return {r.replica_id: (r.node, r.healthy) for r in status.replicas}

        before = nodes()
        assert len({node for node, _ in before.values()}) == 2, before
        prompts = [[i + 20] * 25 for i in range(6)]
        results, running = {}, threading.Event()

        def stream(i: int) -> None:
            tokens = []
            request = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=prompts[i]),
                                         sampling=pb.SamplingOptions(max_tokens=60, temperature=0))
            for chunk in front.stub.Generate(request, timeout=120):
                tokens += chunk.token_ids
                if len(tokens) >= 5:
                    running.set()
            results[i] = tokens

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(6)]
        [t.start() for t in threads]
        assert running.wait(30)
        stopped = script("stop-worker", "1")
        assert stopped.returncode == 0, stopped.stderr
        [t.join(120) for t in threads]
        for i, prompt in enumerate(prompts):
            assert results.get(i) == reference_output(prompt, 60), i
        counters = front.stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=10).counters
        assert counters.failed_over >= 1
        lost = [rid for rid, (_, healthy) in nodes().items() if not healthy]
        assert len(lost) == 1, nodes()  # its node is gone and the other worker has no room for it
        started = script("start-worker", "1")
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 45
        while not all(healthy for _, healthy in nodes().values()) and time.monotonic() < deadline:
            time.sleep(0.5)
        after = nodes()
        assert all(healthy for _, healthy in after.values()), after
        assert after[lost[0]][0] != before[lost[0]][0]  # on the new node (a new Ray node id)
        request = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[3] * 10),
                                     sampling=pb.SamplingOptions(max_tokens=5, temperature=0))
        assert [t for c in front.stub.Generate(request, timeout=30) for t in c.token_ids] == \
            reference_output([3] * 10, 5)
        front.proc.terminate()
        assert front.proc.wait(30) == 0
    finally:
        front.stop()
