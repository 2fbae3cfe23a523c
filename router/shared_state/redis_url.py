"""`--state`: `memory`, or where the shared state lives in Redis, and the check that it answers.

`redis://[[user]:password@]host[:port][/db]` (`rediss://` for TLS). The URL is parsed here, not by
redis-py's `from_url`, so that every mistake is one line naming what is wrong (and never
echoing the password), and so that a wrong password is a start-up error rather than a client
that retries forever.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

MEMORY = "memory"
FORM = "memory, or redis://[:password@]host:port/db (rediss:// for TLS)"
CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 2.0


class StateStoreError(Exception):
    """The state store cannot be used as given (bad URL, unreachable, refused): a start-up error."""


@dataclass(frozen=True)
class RedisURL:
    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    def __str__(self) -> str:
        """The URL with the password hidden: what messages and logs show."""
        auth = f"{self.username or ''}:***@" if self.password else (f"{self.username}@" if self.username else "")
        return f"{'rediss' if self.tls else 'redis'}://{auth}{self.host}:{self.port}/{self.db}"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for `redis.Redis` / `redis.asyncio.Redis`: short timeouts and no
        built-in retries, because the caller decides what an outage means."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return dict(host=self.host, port=self.port, db=self.db, username=self.username, password=self.password,
                    ssl=self.tls, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S,
                    retry=Retry(NoBackoff(), 0))


def parse_state(text: str) -> RedisURL | None:
    """None for `memory`; a `RedisURL`; or ValueError saying what is wrong with `text`."""
    if text == MEMORY:
        return None
    shown = str(text)
    try:
        parts = urlsplit(text)
        shown = text.replace(f":{parts.password}@", ":***@") if parts.password else text
        port = 6379 if parts.port is None else parts.port
    except ValueError as e:  # a port that is not a number, or out of range
        raise ValueError(f"must be {FORM}, got {shown!r} ({e})") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"must be {FORM}, got {shown!r}")
    if port == 0:
        raise ValueError(f"{shown!r}: port 0 is not a port Redis listens on")
    if not parts.hostname:
        raise ValueError(f"{shown!r} names no host")
    if parts.query or parts.fragment:
        raise ValueError(f"{shown!r}: options after '?' or '#' are not supported")
    db_text = parts.path.lstrip("/") or "0"
    if not db_text.isdigit():
        raise ValueError(f"{shown!r}: the database must be a number, got {db_text!r}")
    return RedisURL(parts.hostname, port, int(db_text), unquote(parts.username) if parts.username else None,
                    unquote(parts.password) if parts.password is not None else None, parts.scheme == "rediss")


def explain(url: RedisURL, error: Exception) -> str:
    """One line saying why Redis at `url` cannot be used."""
    from redis.exceptions import AuthenticationError, ResponseError

    if isinstance(error, AuthenticationError):
        if url.password is None:
            return f"Redis at {url} requires a password (redis://:PASSWORD@{url.host}:{url.port}/{url.db})"
        return f"Redis at {url} refused the password ({error})"
    if isinstance(error, ResponseError):
        return f"Redis at {url} refused the connection: {error}"
    return f"cannot reach Redis at {url} ({error})"


def probe(url: RedisURL) -> None:
    """Connect, authenticate, select the database and PING once; StateStoreError saying why not."""
    import redis
    from redis.exceptions import RedisError

    client = redis.Redis(**url.client_options())
    try:
        client.ping()
    except (RedisError, OSError) as e:
        raise StateStoreError(explain(url, e)) from None
    finally:
        client.close()
