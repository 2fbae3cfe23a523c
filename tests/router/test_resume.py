"""Resuming a stream with `resume_from` on the same frontend (in-memory journal), over gRPC on
loopback with in-process fake replicas: after the client left, after the request finished,
while the old stream is still open; and every bad resume is a clear error."""
from __future__ import annotations

import time

import grpc
import pytest

from shunter.proto import generation_pb2 as pb
from shunter.router.core import LocalReplicaClient
from tests.fakes import FakeEngine, reference_output

PROMPT = [11] * 20
TEXT = "ça, 世界 🚂 — fin"
SCRIPT = [b + 3 for b in TEXT.encode("utf-8")]


def clients(**engine) -> list[LocalReplicaClient]:
    engine.setdefault("step_time", 0.01)
    return [LocalReplicaClient(f"r{i}", lambda: FakeEngine(**engine)) for i in range(2)]


def new(rid: str, max_tokens: int, prompt: list[int] = PROMPT) -> pb.GenerateRequest:
    return pb.GenerateRequest(request_id=rid, prompt_token_ids=pb.TokenIds(ids=prompt),
                              sampling=pb.SamplingOptions(max_tokens=max_tokens, ignore_eos=True, temperature=0))


def again(rid: str, resume_from: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(request_id=rid, resume_from=resume_from)


def read(call, upto: int | None = None) -> tuple[list[int], list[pb.GenerateResponse]]:
    """Tokens and chunks of a stream, stopping once `upto` tokens came (the call stays open)."""
    tokens, chunks = [], []
    for chunk in call:
        tokens += chunk.token_ids
        chunks.append(chunk)
        if upto is not None and len(tokens) >= upto:
            break
    return tokens, chunks


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_a_client_that_left_resumes_where_it_was(serve):
    server = serve(clients())
    call = server.stub.Generate(new("left", 60))
    got, _ = read(call, 10)
    call.cancel()
    wait_until(lambda: len(server.router.journal) == 0)  # the server saw it leave: aborted, journaled as ended
    rest, chunks = read(server.stub.Generate(again("left", len(got))))
    assert got + rest == reference_output(PROMPT, 60, ignore_eos=True)
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 60


def test_a_finished_request_replays_its_end_from_the_journal(serve):
    server = serve(clients())
    whole, _ = read(server.stub.Generate(new("done", 12)))
    routed = server.router.counters.routed
    rest, chunks = read(server.stub.Generate(again("done", 5)))
    assert rest == whole[5:] and chunks[-1].finish_reason == "length"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (len(PROMPT), 12)
    assert server.router.counters.routed == routed  # nothing ran again
    nothing, chunks = read(server.stub.Generate(again("done", 12)))
    assert nothing == [] and chunks[-1].finish_reason == "length"


def test_resuming_a_stream_still_open_takes_it_over(serve):
    """The client reconnects before the server noticed the first connection was gone: the new
    stream takes the request over; the old one ends with ABORTED."""
    server = serve(clients())
    old = server.stub.Generate(new("twice", 60))
    got, _ = read(old, 8)
    rest, _ = read(server.stub.Generate(again("twice", len(got))))
    assert got + rest == reference_output(PROMPT, 60, ignore_eos=True)
    with pytest.raises(grpc.RpcError) as err:
        read(old)
    assert err.value.code() == grpc.StatusCode.ABORTED


def test_text_continues_exactly_across_a_cut_inside_a_character(serve):
    """The new stream's detokenizer is fed the tokens the client has, so a character split by
    the cut comes out whole (here the old stream is still open: the request is taken over)."""
    server = serve(clients(with_tokenizer=True, script=SCRIPT))
    req = pb.GenerateRequest(request_id="text", prompt="hi", sampling=pb.SamplingOptions(max_tokens=len(SCRIPT)))
    cut = TEXT.encode().index("世".encode()) + 1  # one byte into a three-byte character
    old = server.stub.Generate(req)
    tokens, chunks = read(old, cut)
    _, more = read(server.stub.Generate(again("text", len(tokens))))
    assert "".join(c.text for c in chunks + more) == TEXT
    old.cancel()


def test_text_of_an_adopted_request_equals_the_uninterrupted_text(serve):
    server = serve(clients(with_tokenizer=True))
    req = lambda rid: pb.GenerateRequest(request_id=rid, prompt="hello", sampling=pb.SamplingOptions(  # noqa: E731
        max_tokens=80, temperature=0, ignore_eos=True))
    _, whole = read(server.stub.Generate(req("whole")))
    call = server.stub.Generate(req("cut"))
    tokens, chunks = read(call, 7)
    call.cancel()
    wait_until(lambda: len(server.router.journal) == 0)
    _, more = read(server.stub.Generate(again("cut", len(tokens))))
    assert "".join(c.text for c in chunks + more) == "".join(c.text for c in whole)
    assert [t for c in chunks + more for t in c.token_ids] == [t for c in whole for t in c.token_ids]


def test_a_stream_cut_at_a_stop_string_resumes_as_finished(serve):
    server = serve(clients(with_tokenizer=True, script=SCRIPT))
    req = pb.GenerateRequest(request_id="stop", prompt="hi", sampling=pb.SamplingOptions(max_tokens=64, stop=["🚂"]))
    first, chunks = read(server.stub.Generate(req))
    assert chunks[-1].finish_reason == "stop"
    again_all, more = read(server.stub.Generate(again("stop", 0)))
    assert again_all == first and more[-1].finish_reason == "stop"
    assert "".join(c.text for c in more) == "".join(c.text for c in chunks) == TEXT.split("🚂")[0]


@pytest.mark.parametrize("request_, code, says", [
    (again("nobody", 0), grpc.StatusCode.NOT_FOUND, "request_id 'nobody'"),
    (again("", 3), grpc.StatusCode.INVALID_ARGUMENT, "request_id: required"),
    (again("short", 13), grpc.StatusCode.INVALID_ARGUMENT, "resume_from: 13 is beyond the 12 tokens"),
])
def test_bad_resumes_are_clear_errors_and_the_server_keeps_serving(serve, request_, code, says):
    server = serve(clients())
    read(server.stub.Generate(new("short", 12)))
    with pytest.raises(grpc.RpcError) as err:
        read(server.stub.Generate(request_))
    assert err.value.code() == code and says in err.value.details(), err.value.details()
    tokens, _ = read(server.stub.Generate(new("after", 5)))
    assert tokens == reference_output(PROMPT, 5, ignore_eos=True)


def test_a_resume_beyond_max_tokens_of_an_ended_request_is_invalid(serve):
    server = serve(clients())
    call = server.stub.Generate(new("ended", 40))
    read(call, 3)
    call.cancel()
    wait_until(lambda: len(server.router.journal) == 0)
    with pytest.raises(grpc.RpcError) as err:
        read(server.stub.Generate(again("ended", 41)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "beyond the 40 tokens" in err.value.details()
