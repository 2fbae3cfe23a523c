"""Security options, server side (`shunter serve`) and client side (`shunter status`).

Server: TLS from --tls-cert/--tls-key, mutual TLS with --tls-client-ca; API keys from
--api-key-file and/or SHUNTER_API_KEYS (`auth.py`). Everything is read and checked before the
server starts, so a missing file is one line and exit 2. Client: TLS when --tls or any of its
files is given (also from SHUNTER_TLS_CA, SHUNTER_TLS_CERT, SHUNTER_TLS_KEY), and the key from
--api-key or SHUNTER_API_KEY, sent as `authorization: Bearer <key>`.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import grpc

from shunter.router.security import auth

from shunter.router.security import tls


@dataclass(frozen=True)
class Security:
    """What the frontend applies: TLS credentials (None: plaintext) and API keys (empty: no check)."""

    credentials: grpc.ServerCredentials | None = None
    api_keys: tuple[bytes, ...] = ()
    tls_files: tls.TlsFiles | None = None  # the files `credentials` came from (the HTTP gateway uses them)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [auth.ApiKeyInterceptor(self.api_keys)] if self.api_keys else []

    def describe(self) -> str:
        parts = (["TLS"] if self.credentials else []) + ([f"{len(self.api_keys)} API keys"] if self.api_keys else [])
        return ", ".join(parts) or "plaintext, no API key"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security")
    group.add_argument("--tls-cert", default=None, metavar="PEM",
                       help="serve TLS with this certificate (chain), on gRPC and on --http-port (HTTPS)")
    group.add_argument("--tls-key", default=None, metavar="PEM", help="the private key of --tls-cert")
    group.add_argument("--tls-client-ca", default=None, metavar="PEM",
                       help="mutual TLS: clients must present a certificate signed by this CA")
    group.add_argument("--api-key-file", default=None, metavar="FILE",
                       help=f"API keys, one a line; also from ${auth.ENV_KEYS} (comma-separated). With keys set, "
                            "every gRPC and HTTP call but health needs 'authorization: Bearer <key>' (else UNAUTHENTICATED, HTTP 401)")


def from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Security:
    """The Security the options ask for; ValueError('--option: why') on a wrong one."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert: needs --tls-key, and --tls-key needs --tls-cert")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise ValueError("--tls-client-ca: mutual TLS needs --tls-cert and --tls-key")
    for option in ("tls_cert", "tls_key", "tls_client_ca", "api_key_file"):
        path = getattr(args, option)
        if path is not None and not os.access(path, os.R_OK):
            raise ValueError(f"--{option.replace('_', '-')}: cannot read {path}")
    try:
        keys = auth.load_api_keys(args.api_key_file, environ)
    except ValueError as e:
        raise ValueError(f"--api-key-file: {e}") from None
    if not args.tls_cert:
        return Security(None, keys)
    files = tls.TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
    return Security(tls.server_credentials(files.cert, files.key, files.client_ca), keys, files)


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--tls", action="store_true", help="connect with TLS (implied by the --tls-* files)")
    parser.add_argument("--tls-ca", default=env("SHUNTER_TLS_CA"), metavar="PEM",
                        help="CA that signed the server's certificate (default: the system's; env SHUNTER_TLS_CA)")
    parser.add_argument("--tls-cert", default=env("SHUNTER_TLS_CERT"), metavar="PEM",
                        help="mutual TLS: this client's certificate (env SHUNTER_TLS_CERT)")
    parser.add_argument("--tls-key", default=env("SHUNTER_TLS_KEY"), metavar="PEM",
                        help="mutual TLS: its private key (env SHUNTER_TLS_KEY)")
    parser.add_argument("--api-key", default=env("SHUNTER_API_KEY"),
                        help="sent as 'authorization: Bearer <key>' (env SHUNTER_API_KEY; prefer it: "
                             "a flag shows in the process list)")


def client_channel(args: argparse.Namespace, address: str) -> grpc.Channel:
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        return grpc.secure_channel(address, tls.channel_credentials(args.tls_ca, args.tls_cert, args.tls_key))
    return grpc.insecure_channel(address)


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()
