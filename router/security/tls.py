"""TLS for the gRPC server and its clients, from PEM files.

Server: a certificate and key; with a client CA, mutual TLS (a client must present a
certificate that CA signed). Client (`shunter status`, tests): the CA that signed the server's
certificate (default: the system's roots), and for mutual TLS its own certificate and key.
"""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

Pem = str | os.PathLike


def _read(path: Pem | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


@dataclass(frozen=True)
class TlsFiles:
    """The server's PEM files, for the front doors that are not gRPC (the HTTP gateway)."""

    cert: Pem
    key: Pem
    client_ca: Pem | None = None

    def uvicorn_options(self) -> dict[str, Any]:
        """The same TLS (and mutual TLS) for uvicorn as `server_credentials` gives gRPC."""
        options: dict[str, Any] = {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}
        if self.client_ca is not None:
            options.update(ssl_ca_certs=str(self.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        return options


def server_credentials(cert: Pem, key: Pem, client_ca: Pem | None = None) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(_read(key), _read(cert))], root_certificates=_read(client_ca),
                                       require_client_auth=client_ca is not None)


def channel_credentials(ca: Pem | None = None, cert: Pem | None = None, key: Pem | None = None) -> grpc.ChannelCredentials:
    if (cert is None) != (key is None):
        raise ValueError("a client certificate and its key go together")
    return grpc.ssl_channel_credentials(root_certificates=_read(ca), private_key=_read(key),
                                        certificate_chain=_read(cert))
