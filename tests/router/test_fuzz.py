"""Property-based fuzzing of Generate against a live server: whatever arrives, the server stays up.

Hypothesis builds batches of 1-5 concurrent requests from every field's whole range (NaN and
infinities, ids past the vocabulary, huge counts, unprintable ids, unknown enum values, empty
inputs, duplicate request ids) plus bytes that are no protobuf at all, and cancels some of them
after a few chunks or gives them a deadline of milliseconds. Each answer must be a valid stream
(one request id, tokens in the vocabulary, at most max_tokens of them, one finish reason, on the
last chunk, usage that matches) or a clean gRPC error of an expected code; afterwards the cluster
is idle with no KV block held. Two servers: `fake:bytes` (a tokenizer: text, chat and stop strings
are exercised) and `random:tiny` (the real engine and its KV pool).

CI runs a short, derandomized version; SHUNTER_FUZZ_EXAMPLES=N runs N batches per server (450
per server gives over 2,000 requests in all) and prints the count.
"""
from __future__ import annotations

import concurrent.futures
import os

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shunter.proto import generation_pb2 as pb
from shunter.router.core import LocalReplicaClient
from shunter.router.core import RouterConfig
from shunter.testing.background import BackgroundServer
from tests.fakes import FakeEngine
from tests.router.test_cancellation import assert_idle

EXAMPLES = int(os.environ.get("SHUNTER_FUZZ_EXAMPLES", "40"))
GARBAGE = object()  # a batch member sent as raw bytes, not a GenerateRequest
CLEAN = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
U32, I32, U64 = 2**32 - 1, 2**31 - 1, 2**64 - 1

# Each field: (a valid value, anything its type can hold). A request is all valid, valid but for
# one field, or wild (each field either way), so streams are served as well as refused.
FIELDS = {
    "request_id": (st.sampled_from(["", "", "dup"]), st.text(max_size=200)),
    "input": (st.one_of(st.lists(st.integers(1, 511), min_size=1, max_size=60).map(lambda ids: ("ids", ids)),
                        st.text(min_size=1, max_size=40).map(lambda t: ("prompt", t)),
                        st.lists(st.builds(pb.ChatMessage, role=st.just("user"), content=st.text(max_size=20)),
                                 min_size=1, max_size=3).map(lambda m: ("messages", m))),
              st.one_of(st.just(("none", None)),
                        st.lists(st.integers(0, U32), max_size=80).map(lambda ids: ("ids", ids)),
                        st.text(max_size=40).map(lambda t: ("prompt", t)),
                        st.lists(st.builds(pb.ChatMessage, role=st.sampled_from(["user", "system", "", "robot"]),
                                           content=st.text(max_size=20)), max_size=6).map(lambda m: ("messages", m)))),
    "max_tokens": (st.one_of(st.none(), st.integers(1, 24)), st.integers(0, U32)),
    "temperature": (st.one_of(st.none(), st.just(0.0), st.floats(0, 2)), st.floats(width=32)),
    "top_p": (st.one_of(st.none(), st.floats(0.05, 1)), st.floats(width=32)),
    "top_k": (st.one_of(st.none(), st.integers(-1, 50)), st.integers(-I32 - 1, I32)),
    "seed": (st.one_of(st.none(), st.integers(0, 2**63 - 1)), st.integers(0, U64)),
    "stop": (st.lists(st.text(min_size=1, max_size=3), max_size=2),
             st.lists(st.one_of(st.text(max_size=3), st.text(min_size=250, max_size=300)), max_size=20)),
    "stop_token_ids": (st.lists(st.integers(0, 511), max_size=3), st.lists(st.integers(0, U32), max_size=70)),
    "priority": (st.integers(0, 2), st.integers(-I32 - 1, I32)),
    "ttft_ms": (st.one_of(st.none(), st.floats(1, 1e4)), st.floats(width=32)),
}


@st.composite
def generate_request(draw) -> pb.GenerateRequest:
    mode = draw(st.sampled_from(["valid", "valid", "one_bad", "wild"]))
    bad = draw(st.sampled_from(sorted(FIELDS))) if mode == "one_bad" else None
    v = {name: draw(pair[1] if name == bad or (mode == "wild" and draw(st.booleans())) else pair[0])
         for name, pair in FIELDS.items()}
    req = pb.GenerateRequest(request_id=v["request_id"], priority=v["priority"])
    which, value = v["input"]
    if which == "ids":
        req.prompt_token_ids.ids.extend(value)
    elif which == "prompt":
        req.prompt = value
    elif which == "messages":
        req.messages.messages.extend(value)
    s = req.sampling
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
        if v[name] is not None:
            setattr(s, name, v[name])
    s.stop.extend(v["stop"])
    s.stop_token_ids.extend(v["stop_token_ids"])
    s.ignore_eos = draw(st.booleans())
    if v["ttft_ms"] is not None:
        req.slo.ttft_ms = v["ttft_ms"]
    return req


call = st.fixed_dictionaries({
    "request": st.one_of(generate_request(), generate_request(), generate_request(), st.just(GARBAGE)),
    "garbage": st.binary(max_size=64),
    "cancel_after": st.one_of(st.none(), st.none(), st.integers(0, 3)),  # chunks read before cancelling
    "timeout": st.sampled_from([30.0, 30.0, 30.0, 0.005, 0.05]),
})


@pytest.fixture(scope="module", params=["fake:bytes", "random:tiny"])
def fuzz_server(request):
    if request.param == "fake:bytes":
        client = LocalReplicaClient("r0", lambda: FakeEngine(step_time=0.001, with_tokenizer=True))
    else:
        from shunter.replica.engine import Engine
        from shunter.replica.engine_config import EngineConfig

        config = EngineConfig(model="random:tiny", device="cpu", num_kv_blocks=48, seed=0, max_num_seqs=4, num_threads=1)
        client = LocalReplicaClient("r0", lambda: Engine(config))
    server = BackgroundServer([client], RouterConfig(poll_wait_s=0.05, rebalance=False, max_in_flight=3, max_queued=1))
    server.sent = server.streamed = 0
    server.raw = server.channel.unary_stream("/shunter.v1.Generation/Generate", request_serializer=None,
                                             response_deserializer=pb.GenerateResponse.FromString)
    pool = concurrent.futures.ThreadPoolExecutor(5)
    yield server, pool
    pool.shutdown()
    print(f"\nfuzz {request.param}: {server.sent} requests, {server.streamed} answered with a stream")
    server.close()


def check_stream(req: pb.GenerateRequest, chunks: list[pb.GenerateResponse], cancelled: bool, vocab: int) -> None:
    assert len({c.request_id for c in chunks}) <= 1 and all(c.request_id for c in chunks)
    if req.request_id and chunks:
        assert chunks[0].request_id == req.request_id
    tokens = [t for c in chunks for t in c.token_ids]
    assert all(0 <= t < vocab for t in tokens)
    assert all(not c.finish_reason for c in chunks[:-1])
    max_tokens = req.sampling.max_tokens if req.sampling.HasField("max_tokens") else 16
    assert len(tokens) <= max_tokens
    if cancelled:
        return
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length")
    assert last.usage.completion_tokens == len(tokens) and last.usage.prompt_tokens > 0
    if last.finish_reason == "length":
        assert len(tokens) == max_tokens


def one_call(server, c: dict) -> None:
    """Send one; check what came back."""
    garbage = c["request"] is GARBAGE
    stream = (server.raw(c["garbage"], timeout=c["timeout"]) if garbage
              else server.stub.Generate(c["request"], timeout=c["timeout"]))
    chunks, cancelled = [], False
    try:
        for chunk in stream:
            chunks.append(chunk)
            if c["cancel_after"] is not None and len(chunks) > c["cancel_after"]:
                stream.cancel()
                cancelled = True
                break
    except grpc.RpcError as e:
        assert e.code() in CLEAN | {grpc.StatusCode.DEADLINE_EXCEEDED}, (c, e.code(), e.details())
        assert e.code() != grpc.StatusCode.INVALID_ARGUMENT or chunks == []
        return
    if not garbage:  # bytes that happen to parse are a request too, of unknown fields: not checked
        check_stream(c["request"], chunks, cancelled, vocab=server.router.info.limits.vocab_size)
        server.streamed += 1


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(batch=st.lists(call, min_size=1, max_size=5))
def test_fuzzed_generate_calls_get_a_valid_stream_or_a_clean_error(fuzz_server, batch):
    server, pool = fuzz_server
    server.sent += len(batch)
    for future in [pool.submit(one_call, server, c) for c in batch]:
        future.result(60)


def test_after_the_fuzzing_nothing_is_held_and_the_server_serves(fuzz_server):
    server, _ = fuzz_server
    assert server.sent >= EXAMPLES and server.streamed >= EXAMPLES // 10  # not only refusals
    assert_idle(server)
    ok = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[5, 6, 7]), sampling=pb.SamplingOptions(max_tokens=3))
    assert list(server.stub.Generate(ok, timeout=30))[-1].finish_reason
