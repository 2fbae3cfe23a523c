"""Validation is complete and comes first: no invalid request reaches a replica.

Each bad request is refused with INVALID_ARGUMENT naming its field (or, too large to read,
RESOURCE_EXHAUSTED saying so), and a replica that counts its submits sees none of them.
"""
from __future__ import annotations

import grpc
import pytest

from shunter.proto import generation_pb2 as pb
from shunter.router.grpc.request import MAX_MESSAGES, MAX_REQUEST_BYTES, MAX_STOP, MAX_STOP_CHARS, MAX_STOP_TOKEN_IDS
from shunter.router.core import LocalReplicaClient
from tests.fakes import FakeEngine
from tests.router.test_frontend import BAD, greq, ids


class CountingClient(LocalReplicaClient):
    """Counts what reaches the replica."""

    submitted = 0

    async def submit(self, request_id, prompt_token_ids, params) -> None:
        self.submitted += 1
        await super().submit(request_id, prompt_token_ids, params)


def user(n: int) -> pb.Messages:
    return pb.Messages(messages=[pb.ChatMessage(role="user", content="hi")] * n)


MORE = [
    ({"prompt_token_ids": ids(5), "sampling": {"stop": ["x"] * (MAX_STOP + 1)}}, "sampling.stop"),
    ({"prompt_token_ids": ids(5), "sampling": {"stop": ["y" * (MAX_STOP_CHARS + 1)]}}, "sampling.stop"),
    ({"prompt_token_ids": ids(5), "sampling": {"stop_token_ids": [1] * (MAX_STOP_TOKEN_IDS + 1)}},
     "sampling.stop_token_ids"),
    ({"messages": user(MAX_MESSAGES + 1)}, "messages"),
    ({"messages": pb.Messages(messages=[pb.ChatMessage(role="", content="a")])}, "messages[0].role"),
    ({"prompt_token_ids": ids(5), "priority": -1}, "priority"),
    ({"prompt_token_ids": ids(5), "sampling": {"seed": 2**63}}, "sampling.seed"),
    ({"prompt_token_ids": ids(5), "sampling": {"temperature": float("inf")}}, "sampling.temperature"),
    ({"prompt_token_ids": ids(5), "sampling": {"top_p": float("nan")}}, "sampling.top_p"),
    ({"prompt_token_ids": ids(5), "slo": pb.Slo(ttft_ms=float("inf"))}, "slo.ttft_ms"),
    ({"prompt_token_ids": ids(5), "request_id": "a\nb"}, "request_id"),
    ({"prompt": ""}, "prompt"),
]


def test_nothing_invalid_reaches_a_replica(serve):
    client = CountingClient("r0", lambda: FakeEngine(with_tokenizer=True))
    server = serve([client])
    cases = [case for case in BAD if "prompt" not in case[0]] + MORE  # this model has a tokenizer
    for kwargs, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            list(server.stub.Generate(greq(**kwargs), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (kwargs, err.value.details())
        assert err.value.details().startswith(field), (field, err.value.details())
    with pytest.raises(grpc.RpcError) as err:  # past the server's receive limit: not even parsed
        list(server.stub.Generate(greq(prompt="z" * MAX_REQUEST_BYTES), timeout=10))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in err.value.details()
    raw = server.channel.unary_stream("/shunter.v1.Generation/Generate", request_serializer=None)
    with pytest.raises(grpc.RpcError) as err:  # no protobuf at all: refused, not UNKNOWN with a traceback logged
        list(raw(b"\xff\xff\xff", timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("request:")
    assert client.submitted == 0
    assert server.router.counters.rejected_by == {"invalid": len(cases)}
    limits = {"prompt_token_ids": ids(5), "sampling": {"max_tokens": 2, "seed": 2**63 - 1, "stop": ["y" * MAX_STOP_CHARS] * MAX_STOP,
                                                       "stop_token_ids": [1] * MAX_STOP_TOKEN_IDS}}
    assert list(server.stub.Generate(greq(**limits), timeout=10))[-1].finish_reason  # at the limits: served
    chunks = list(server.stub.Generate(greq(messages=user(MAX_MESSAGES), sampling={"max_tokens": 1}), timeout=10))
    assert chunks[-1].finish_reason and client.submitted == 2
