"""The gRPC API on loopback over in-process fake replicas: validation, text, stop, health, reflection."""
from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shunter.proto import generation_pb2 as pb
from shunter.router.core import LocalReplicaClient
from shunter.router.core import RouterConfig
from tests.fakes import ByteTokenizer, FakeEngine, reference_output

TEXT = "héllo, 世界! ça va? 🚂 done"
SCRIPT = [b + 3 for b in TEXT.encode("utf-8")]


def fake_clients(n: int = 2, **engine) -> list[LocalReplicaClient]:
    return [LocalReplicaClient(f"r{i}", lambda: FakeEngine(**engine)) for i in range(n)]


def greq(**kw) -> pb.GenerateRequest:
    sampling = kw.pop("sampling", {})
    return pb.GenerateRequest(sampling=pb.SamplingOptions(**sampling), **kw)


def ids(*tokens: int) -> pb.TokenIds:
    return pb.TokenIds(ids=list(tokens))


def test_stream_tokens_usage_and_request_id(serve):
    server = serve(fake_clients())
    prompt = [7] * 20
    chunks = list(server.stub.Generate(greq(prompt_token_ids=ids(*prompt), sampling={"max_tokens": 12, "ignore_eos": True})))
    tokens = [t for c in chunks for t in c.token_ids]
    assert tokens == reference_output(prompt, 12, ignore_eos=True)
    last = chunks[-1]
    assert last.finish_reason == "length" and all(not c.finish_reason for c in chunks[:-1])
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (20, 12)
    assert len({c.request_id for c in chunks}) == 1 and chunks[0].request_id
    assert chunks[0].replica_id in ("r0", "r1")


def test_multibyte_text_is_never_split_and_stop_strings_cut(serve):
    server = serve(fake_clients(with_tokenizer=True, script=SCRIPT))
    chunks = list(server.stub.Generate(greq(prompt="hi", sampling={"max_tokens": len(SCRIPT), "temperature": 0})))
    assert all("\ufffd" not in c.text for c in chunks)
    assert "".join(c.text for c in chunks) == TEXT
    assert sum(len(c.token_ids) for c in chunks) == len(SCRIPT)
    stopped = list(server.stub.Generate(greq(prompt="hi", sampling={"max_tokens": 64, "stop": ["!"]})))
    assert "".join(c.text for c in stopped) == "héllo, 世界"
    assert stopped[-1].finish_reason == "stop"
    sent = [t for c in stopped for t in c.token_ids]
    assert sent == SCRIPT[: len("héllo, 世界!".encode())]  # up to the token completing the stop string


def test_messages_use_the_chat_template(serve):
    server = serve(fake_clients(with_tokenizer=True))
    chunks = list(server.stub.Generate(greq(messages=pb.Messages(messages=[pb.ChatMessage(role="user", content="hey")]),
                                            sampling={"max_tokens": 3})))
    rendered = ByteTokenizer().apply_chat_template([{"role": "user", "content": "hey"}], tokenize=False)
    assert rendered == "<user>hey\n<assistant>"
    assert chunks[-1].usage.prompt_tokens == len(rendered)  # one token a byte, no special token added again


def test_bad_messages_name_the_field(serve):
    server = serve(fake_clients(with_tokenizer=True))
    for messages, field in [([], "messages: must not be empty"),
                            ([pb.ChatMessage(role="user", content="a"), pb.ChatMessage(role="robot", content="b")],
                             "messages[1].role")]:
        with pytest.raises(grpc.RpcError) as err:
            list(server.stub.Generate(greq(messages=pb.Messages(messages=messages))))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(field)


BAD = [
    (dict(), "prompt"),
    (dict(prompt_token_ids=ids()), "prompt_token_ids"),
    (dict(prompt_token_ids=ids(5, 10**6)), "prompt_token_ids"),
    (dict(prompt="text but no tokenizer"), "prompt"),
    (dict(prompt_token_ids=ids(5), sampling={"max_tokens": 0}), "sampling.max_tokens"),
    (dict(prompt_token_ids=ids(5), sampling={"max_tokens": 10**6}), "sampling.max_tokens"),
    (dict(prompt_token_ids=ids(5), sampling={"temperature": -1}), "sampling.temperature"),
    (dict(prompt_token_ids=ids(5), sampling={"temperature": float("nan")}), "sampling.temperature"),
    (dict(prompt_token_ids=ids(5), sampling={"top_p": 0}), "sampling.top_p"),
    (dict(prompt_token_ids=ids(5), sampling={"top_p": 1.5}), "sampling.top_p"),
    (dict(prompt_token_ids=ids(5), sampling={"top_k": -2}), "sampling.top_k"),
    (dict(prompt_token_ids=ids(5), sampling={"seed": 2**64 - 1}), "sampling.seed"),
    (dict(prompt_token_ids=ids(5), sampling={"stop": [""]}), "sampling.stop"),
    (dict(prompt_token_ids=ids(5), sampling={"stop_token_ids": [10**6]}), "sampling.stop_token_ids"),
    (dict(prompt_token_ids=ids(5), priority=7), "priority"),
    (dict(prompt_token_ids=ids(5), slo=pb.Slo(ttft_ms=0)), "slo.ttft_ms"),
    (dict(prompt_token_ids=ids(5), slo=pb.Slo(tbt_ms=-3)), "slo.tbt_ms"),
    (dict(prompt_token_ids=ids(5), request_id="x" * 500), "request_id"),
]


def test_every_bad_field_is_invalid_argument_naming_it_and_the_server_keeps_serving(serve):
    server = serve(fake_clients())
    for kwargs, field in BAD:
        with pytest.raises(grpc.RpcError) as err:
            list(server.stub.Generate(greq(**kwargs)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (kwargs, err.value.details())
        assert err.value.details().startswith(field), (field, err.value.details())
    chunks = list(server.stub.Generate(greq(prompt_token_ids=ids(5, 6), sampling={"max_tokens": 2})))
    assert chunks[-1].finish_reason


def test_overload_is_resource_exhausted(serve):
    server = serve(fake_clients(step_time=0.02), RouterConfig(poll_wait_s=0.05, rebalance=False, max_in_flight=1))
    long = server.stub.Generate(greq(prompt_token_ids=ids(5), sampling={"max_tokens": 200, "ignore_eos": True}))
    next(long)
    with pytest.raises(grpc.RpcError) as err:
        list(server.stub.Generate(greq(prompt_token_ids=ids(5), sampling={"max_tokens": 2})))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    long.cancel()


def test_health_status_and_cluster_status(serve):
    server = serve(fake_clients())
    health = health_pb2_grpc.HealthStub(server.channel)
    for name in ("", "shunter.v1.Generation"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
    list(server.stub.Generate(greq(prompt_token_ids=ids(*range(1, 40)), sampling={"max_tokens": 3})))
    status = server.stub.ClusterStatus(pb.ClusterStatusRequest())
    assert [r.replica_id for r in status.replicas] == ["r0", "r1"]
    assert all(r.healthy and r.kv_blocks_total > 0 for r in status.replicas)
    assert status.counters.routed == 1 and status.routing == "prefix_aware"


def test_a_generic_reflection_client_gets_the_same_stream(serve):
    from grpc_requests import Client

    server = serve(fake_clients())
    prompt = list(range(3, 30))
    ours = [list(c.token_ids) for c in server.stub.Generate(
        greq(prompt_token_ids=ids(*prompt), sampling={"max_tokens": 10, "temperature": 0}))]
    client = Client.get_by_endpoint(f"127.0.0.1:{server.port}")
    assert "shunter.v1.Generation" in client.service_names
    theirs = list(client.request("shunter.v1.Generation", "Generate",
                                 {"prompt_token_ids": {"ids": prompt}, "sampling": {"max_tokens": 10, "temperature": 0}}))
    flat = lambda chunks: [int(t) for c in chunks for t in c]  # noqa: E731
    assert flat(c.get("token_ids", []) for c in theirs) == flat(ours)
    assert theirs[-1]["finish_reason"] == "length"
