"""API keys: where they come from, what a header must say, and `shunter status` against a keyed server."""
from __future__ import annotations

import argparse

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shunter.proto import generation_pb2 as pb
from shunter.router import status_cli
from shunter.router.api_keys import CLIENT_ENV, ENV, ApiKeys, load_api_keys
from shunter.router.replica_client import LocalReplicaClient
from shunter.testing.background import BackgroundServer
from tests.fakes import FakeEngine


def test_keys_from_a_file_and_the_environment(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# ops team\nalpha\n\n  beta  \n")
    keys = load_api_keys(str(path), {ENV: " gamma , ,delta"})
    assert all(keys.allows(f"Bearer {k}") for k in ("alpha", "beta", "gamma", "delta"))
    assert not keys.allows("Bearer # ops team")
    assert load_api_keys(None, {}) is None  # no key anywhere: the server stays open
    assert load_api_keys(None, {ENV: "solo"}).allows("Bearer solo")


@pytest.mark.parametrize(("content", "says"), [
    (None, "--api-key-file: cannot read"),
    ("# nothing\n\n", "holds no key"),
    ("two words\n", "holds a space"),
])
def test_a_bad_key_file_is_named(tmp_path, content, says):
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=says):
        load_api_keys(str(path), {})


@pytest.mark.parametrize(("header", "allowed"), [
    ("Bearer s3cret", True),
    ("bearer s3cret", True),  # the scheme is case-insensitive (RFC 7235), the key is not
    ("Bearer  s3cret ", True),
    ("Bearer S3CRET", False),
    ("Bearer s3cret2", False),
    ("Bearer s3cre", False),
    ("s3cret", False),
    ("Basic s3cret", False),
    ("Bearer ", False),
    ("", False),
    (None, False),
])
def test_only_bearer_with_a_known_key_passes(header, allowed):
    assert ApiKeys(["s3cret", "other"]).allows(header) is allowed


def test_grpc_calls_need_a_key_and_health_stays_open():
    server = BackgroundServer([LocalReplicaClient("r0", FakeEngine)], api_keys=ApiKeys(["k-one", "k-two"]))
    try:
        request = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[5, 6]),
                                     sampling=pb.SamplingOptions(max_tokens=2))
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "k-one"),)):
            with pytest.raises(grpc.RpcError) as denied:
                list(server.stub.Generate(request, metadata=metadata))
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert denied.value.details().startswith("authorization:")
        with pytest.raises(grpc.RpcError) as denied:
            server.stub.ClusterStatus(pb.ClusterStatusRequest())
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        chunks = list(server.stub.Generate(request, metadata=(("authorization", "Bearer k-two"),)))
        assert chunks[-1].usage.completion_tokens == 2
        health = health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert server.router.counters.routed == 1  # nothing refused reached a replica
    finally:
        server.close()


def test_status_sends_the_key_from_the_environment(monkeypatch, capsys):
    server = BackgroundServer([LocalReplicaClient("r0", FakeEngine)], api_keys=ApiKeys(["k"]))
    try:
        args = argparse.Namespace(address=f"127.0.0.1:{server.port}", timeout=5.0)
        monkeypatch.delenv(CLIENT_ENV, raising=False)
        assert status_cli.run(args) == 1 and "UNAUTHENTICATED" in capsys.readouterr().err
        monkeypatch.setenv(CLIENT_ENV, "k")
        assert status_cli.run(args) == 0 and "r0" in capsys.readouterr().out
    finally:
        server.close()
