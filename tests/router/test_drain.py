"""Drain's verdict matches what the clients got.

Before, drain waited up to its timeout, then gave the server a 1 s grace in which streams kept
running: a stream could finish in that second while serve printed "drain timed out" (issue 11:
six streams got their whole output and the message said otherwise).
"""
from __future__ import annotations

import threading

import grpc

from shunter.proto import generation_pb2 as pb
from shunter.router.core import LocalReplicaClient


def one_stream(server, max_tokens: int) -> tuple[dict, threading.Event, threading.Thread]:
    got: dict = {"tokens": 0, "finish": None, "error": None}
    started = threading.Event()

    def read() -> None:
        request = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[4] * 10),
                                     sampling=pb.SamplingOptions(max_tokens=max_tokens, ignore_eos=True))
        try:
            for chunk in server.stub.Generate(request, timeout=60):
                got["tokens"] += len(chunk.token_ids)
                got["finish"] = chunk.finish_reason or got["finish"]
                started.set()
        except grpc.RpcError as e:
            got["error"] = e.code()
        started.set()

    thread = threading.Thread(target=read)
    thread.start()
    return got, started, thread


def drain_during_one_stream(serve, max_tokens: int, timeout_s: float) -> tuple[bool, dict]:
    from tests.fakes import FakeEngine

    server = serve([LocalReplicaClient("r0", lambda: FakeEngine(step_time=0.01))])
    got, started, thread = one_stream(server, max_tokens)
    assert started.wait(30)
    drained = server.call(server.frontend.drain_and_stop(timeout_s))
    thread.join(60)
    return drained, got


def test_a_stream_still_running_at_the_deadline_is_ended_there_with_a_finish_reason(serve):
    drained, got = drain_during_one_stream(serve, max_tokens=100, timeout_s=0.4)  # ~1 s of steps
    assert drained is False
    assert got["finish"] == "shutdown" and got["error"] is None and got["tokens"] < 100


def test_streams_that_finish_in_time_drain(serve):
    drained, got = drain_during_one_stream(serve, max_tokens=20, timeout_s=30)
    assert drained is True
    assert (got["tokens"], got["finish"], got["error"]) == (20, "length", None)
