"""`shunter serve --state redis://...` as users run it: two frontend processes joining the session's
Ray cluster, two SmolLM2 replicas, a real redis-server. A stream through frontend A, A SIGKILLed
mid-stream and the stream resumed through B (`--frontend-only`) gives Hugging Face's greedy
tokens; B routes a prefix A placed to the replica holding it; the last frontend to stop stops
the replicas (they outlived A, which started them)."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from shunter.proto import generation_pb2 as pb
from shunter.proto import generation_pb2_grpc as pb_grpc
from shunter.testing.redis_server import free_port
from tests.conftest import REPO
from tests.hf_reference import hf_greedy

pytestmark = pytest.mark.slow

MAX_TOKENS = 24
QUESTIONS = ["Explain, step by step, how a hump yard sorts freight cars into trains.",
             "What does a railway dispatcher do all day?",
             "Once upon a time, in a small town next to the mountains, there lived an old signalman who"]


class Frontend:
    """A `shunter serve` process; `lines` gets what it prints."""

    def __init__(self, *argv: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "shunter.cli", "serve", "--port", str(self.port), *argv],
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()
        self.output = self.wait_for("serving", 300)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.GenerationStub(self.channel)

    def wait_for(self, text: str, timeout: float) -> str:
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen.append(self.lines.get(timeout=1))
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if text in seen[-1]:
                return "".join(seen)
        raise AssertionError(f"no {text!r} from `shunter serve`:\n" + "".join(seen))

    def stop(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture(scope="module")
def tokenizer(smollm2_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder)


def request(prompt: list[int], **kw) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=prompt),
                              sampling=pb.SamplingOptions(max_tokens=MAX_TOKENS, temperature=0), **kw)


def read(call, upto: int | None = None) -> tuple[list[int], list[str], str]:
    tokens, replicas, rid = [], [], ""
    for chunk in call:
        tokens += chunk.token_ids
        replicas.append(chunk.replica_id)
        rid = chunk.request_id
        if upto is not None and len(tokens) >= upto:
            break
    return tokens, replicas, rid


def test_a_frontend_killed_mid_stream_resumes_through_another_with_hfs_tokens(ray_cluster, redis_db, smollm2_folder,
                                                                             tokenizer):
    import ray

    address, state = ray_cluster.get_runtime_context().gcs_address, redis_db.address
    prompts = [list(tokenizer(q).input_ids) for q in QUESTIONS]
    reference = hf_greedy(smollm2_folder, prompts[:1], MAX_TOKENS)[0]
    assert len(reference) == MAX_TOKENS
    a = b = None
    try:
        a = Frontend("--address", address, "--state", state, "--replicas", "2", "--num-cpus-per-replica", "1",
                     "--num-kv-blocks", "64", "--no-rebalance")
        b = Frontend("--frontend-only", "--address", address, "--state", state, "--no-rebalance")
        assert "attaching to replica-0" in b.output and "attaching to replica-1" in b.output

        # A prefix placed through A routes through B to the replica holding it.
        held = a.stub.Generate(request(prompts[1]))
        _, on_1, _ = read(held, 1)  # it keeps its replica busy ...
        _, on_2, _ = read(a.stub.Generate(request(prompts[2])))  # ... so this one goes to the other
        read(held)
        assert on_1[0] != on_2[0]
        _, on, _ = read(b.stub.Generate(request(prompts[2] + prompts[1][:5])))
        assert on[0] == on_2[0]

        # A dies mid-stream; the client resumes through B from the tokens it has.
        routed = b.stub.ClusterStatus(pb.ClusterStatusRequest()).counters.routed
        first, _, rid = read(a.stub.Generate(request(prompts[0], request_id="kill-me")), 6)
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(30)
        rest, _, _ = read(b.stub.Generate(pb.GenerateRequest(request_id=rid, resume_from=len(first)), timeout=300))
        assert first + rest == reference
        assert b.stub.ClusterStatus(pb.ClusterStatusRequest()).counters.routed == routed + 1  # adopted mid-stream

        # B is the last frontend: it stops the replicas A started.
        b.proc.send_signal(signal.SIGTERM)
        b.wait_for("stopped the replicas", 120)
        assert b.proc.wait(60) == 0
        for i in range(2):
            with pytest.raises(ValueError):
                ray.get_actor(f"shunter-replica-{i}", namespace="shunter")
    finally:
        for frontend in (a, b):
            if frontend is not None:
                frontend.stop()
        for i in range(2):  # whatever the test left
            try:
                ray.kill(ray.get_actor(f"shunter-replica-{i}", namespace="shunter"), no_restart=True)
            except ValueError:
                pass
