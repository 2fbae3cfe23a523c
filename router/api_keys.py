"""API keys, one check for both front doors: gRPC (`grpc_auth.py`) and HTTP (`http_gateway.py`).

Keys come from a file (`--api-key-file`, one a line, `#` comments) and/or the environment
(`SHUNTER_API_KEYS`, comma-separated); none from either means the server is open, as before.
A client sends `authorization: Bearer <key>` (gRPC metadata or HTTP header; the official openai
client does so with its `api_key`). Keys are held and compared as SHA-256 digests with
`hmac.compare_digest`, against every key without stopping early, so neither a key's content nor
its length shows in the time an answer takes. Keys are never logged.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Iterable, Mapping

ENV = "SHUNTER_API_KEYS"
CLIENT_ENV = "SHUNTER_API_KEY"  # what `shunter status` sends, when set


class ApiKeys:
    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(k) for k in keys]
        if not self._digests:
            raise ValueError("api keys: none given")

    def allows(self, authorization: str | None) -> bool:
        """True when `authorization` is `Bearer <one of the keys>`."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        digest = _digest(token.strip())
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(known, digest)
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load_api_keys(path: str | None, environ: Mapping[str, str] = os.environ) -> ApiKeys | None:
    """The keys of `path` and of $SHUNTER_API_KEYS, or None when neither has one; ValueError('--api-key-file: why')."""
    keys = []
    if path is not None:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as e:
            raise ValueError(f"--api-key-file: cannot read {path} ({e.strerror})") from None
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise ValueError(f"--api-key-file: {path} holds no key")
        if any(len(k.split()) > 1 for k in keys):
            raise ValueError(f"--api-key-file: a key in {path} holds a space (one key a line)")
    keys += [k.strip() for k in environ.get(ENV, "").split(",") if k.strip()]
    return ApiKeys(keys) if keys else None
