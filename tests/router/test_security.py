"""TLS, mutual TLS and API keys on the gRPC server; `shunter status` through them.

Certificates are made per module (`certs.py`); the server runs over in-process fake replicas.
Without a valid key every call but health is UNAUTHENTICATED; health stays open to probes.
"""
from __future__ import annotations

import argparse

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shunter.proto import generation_pb2 as pb
from shunter.proto import generation_pb2_grpc as pb_grpc
from shunter.router.security import auth
from shunter.router.security import options as security_options
from shunter.router.grpc import status_cli
from shunter.router.security import tls
from shunter.router.core import LocalReplicaClient
from shunter.router.core import RouterConfig
from shunter.router.security import Security
from shunter.testing.background import BackgroundServer
from tests.fakes import FakeEngine
from tests.router.certs import make_pki

KEYS = (b"k-first-0123456789", b"k-second-abcdefghij")
REQUEST = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[5, 6]), sampling=pb.SamplingOptions(max_tokens=3))


def test_check_bearer():
    assert auth.check_bearer("Bearer k-second-abcdefghij", KEYS)
    assert auth.check_bearer("bearer  k-first-0123456789 ", KEYS)
    for header in (None, "", "k-first-0123456789", "Basic k-first-0123456789", "Bearer k-first-012345678",
                   "Bearer k-first-0123456789x", "Bearer ", "Bearer k-first-0123456789,k-second-abcdefghij"):
        assert not auth.check_bearer(header, KEYS), header
    assert not auth.check_bearer("Bearer anything", ())  # no keys configured: nothing matches


def test_keys_from_a_file_and_the_environment(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# staff\nk-first-0123456789\n\n  k-second-abcdefghij  # ci\n")
    assert auth.load_api_keys(path, {}) == KEYS
    assert auth.load_api_keys(None, {auth.ENV_KEYS: " a, b ,,a"}) == (b"a", b"b")
    assert auth.load_api_keys(path, {auth.ENV_KEYS: "env"}) == (b"env", *KEYS)
    assert auth.load_api_keys(None, {}) == ()
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no API key"):
        auth.load_api_keys(tmp_path / "empty", {})


def server_args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"tls_cert": None, "tls_key": None, "tls_client_ca": None, "api_key_file": None, **kw})


def test_option_errors_name_the_option(pki, tmp_path):
    for kw, option in [({"tls_cert": str(pki.server_cert)}, "--tls-cert"),
                       ({"tls_client_ca": str(pki.ca)}, "--tls-client-ca"),
                       ({"api_key_file": str(tmp_path / "missing")}, "--api-key-file")]:
        with pytest.raises(ValueError, match=f"^{option}"):
            security_options.from_args(server_args(**kw), {})
    secure = security_options.from_args(server_args(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)),
                                        {auth.ENV_KEYS: "x"})
    assert secure.credentials is not None and secure.api_keys == (b"x",) and secure.describe() == "TLS, 1 API keys"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_server(pki):
    """TLS and API keys together."""
    security = Security(tls.server_credentials(pki.server_cert, pki.server_key), KEYS)
    server = BackgroundServer([LocalReplicaClient("r0", FakeEngine)], RouterConfig(poll_wait_s=0.05, rebalance=False),
                              security=security)
    yield server
    server.close()


def bearer(key: bytes) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key.decode()}"),)


def test_without_a_valid_key_only_health_answers(secure_server, pki):
    with grpc.secure_channel(f"127.0.0.1:{secure_server.port}", tls.channel_credentials(pki.ca)) as channel:
        stub = pb_grpc.GenerationStub(channel)
        for metadata in ((), bearer(b"wrong"), (("authorization", KEYS[0].decode()),)):
            for call in (lambda m: list(stub.Generate(REQUEST, metadata=m, timeout=10)),
                         lambda m: stub.ClusterStatus(pb.ClusterStatusRequest(), metadata=m, timeout=10)):
                with pytest.raises(grpc.RpcError) as err:
                    call(metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "Bearer" in err.value.details() and KEYS[0].decode() not in err.value.details()
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        for key in KEYS:
            chunks = list(stub.Generate(REQUEST, metadata=bearer(key), timeout=10))
            assert chunks[-1].finish_reason == "length"


def test_plaintext_and_an_unknown_ca_cannot_connect(secure_server, pki):
    for channel in (grpc.insecure_channel(f"127.0.0.1:{secure_server.port}"),
                    grpc.secure_channel(f"127.0.0.1:{secure_server.port}", tls.channel_credentials(pki.other_ca))):
        with channel, pytest.raises(grpc.RpcError) as err:
            pb_grpc.GenerationStub(channel).ClusterStatus(pb.ClusterStatusRequest(), metadata=bearer(KEYS[0]),
                                                          timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate(pki):
    security = Security(tls.server_credentials(pki.server_cert, pki.server_key, client_ca=pki.ca))
    server = BackgroundServer([LocalReplicaClient("r0", FakeEngine)], RouterConfig(poll_wait_s=0.05, rebalance=False),
                              security=security)
    try:
        address = f"127.0.0.1:{server.port}"
        with grpc.secure_channel(address, tls.channel_credentials(pki.ca)) as channel, \
                pytest.raises(grpc.RpcError) as err:
            pb_grpc.GenerationStub(channel).ClusterStatus(pb.ClusterStatusRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(address, tls.channel_credentials(pki.ca, pki.client_cert, pki.client_key)) as channel:
            assert list(pb_grpc.GenerationStub(channel).Generate(REQUEST, timeout=10))[-1].finish_reason == "length"
    finally:
        server.close()


def status_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    status_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_status_connects_with_tls_and_a_key(secure_server, pki, capsys, monkeypatch):
    address = f"127.0.0.1:{secure_server.port}"
    assert status_cli.run(status_args("--address", address, "--tls-ca", str(pki.ca))) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert status_cli.run(status_args("--address", address, "--tls-ca", str(pki.ca), "--api-key", "k-first-0123456789")) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("replica  node")
    monkeypatch.setenv("SHUNTER_API_KEY", KEYS[1].decode())
    monkeypatch.setenv("SHUNTER_TLS_CA", str(pki.ca))
    assert status_cli.run(status_args("--address", address)) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("r0")


def test_no_prompt_text_or_key_is_logged(caplog):
    """At DEBUG, through a served request, a refused key and a refused request."""
    secret_prompt, key = "the patient's diagnosis is xyzzy", b"k-logged-never-42"
    caplog.set_level("DEBUG")
    server = BackgroundServer([LocalReplicaClient("r0", lambda: FakeEngine(with_tokenizer=True))],
                              RouterConfig(poll_wait_s=0.05, rebalance=False), security=Security(api_keys=(key,)))
    try:
        ok = pb.GenerateRequest(prompt=secret_prompt, sampling=pb.SamplingOptions(max_tokens=4))
        assert list(server.stub.Generate(ok, metadata=bearer(key), timeout=10))[-1].finish_reason
        bad = pb.GenerateRequest(prompt=secret_prompt, sampling=pb.SamplingOptions(max_tokens=0))
        for metadata in (bearer(key), bearer(key + b"x")):
            with pytest.raises(grpc.RpcError):
                list(server.stub.Generate(bad, metadata=metadata, timeout=10))
    finally:
        server.close()
    assert caplog.records  # DEBUG was really captured (asyncio, grpc)
    assert "xyzzy" not in caplog.text and key.decode() not in caplog.text
