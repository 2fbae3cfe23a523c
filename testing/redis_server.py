"""A throwaway redis-server on a free loopback port with a password, for tests and benchmarks.

Nothing is saved to disk, so a `stop()` then `start()` (same port, same password) is Redis
coming back empty after an outage.
"""
from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time

from shunter.router.shared_state import RedisURL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.binary, self.port = binary, free_port()
        self.password = password or secrets.token_hex(8)
        self.url = RedisURL("127.0.0.1", self.port, 0, password=self.password)
        self._dir = tempfile.TemporaryDirectory(prefix="shunter-redis-")
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--requirepass", self.password,
             "--save", "", "--appendonly", "no", "--dir", self._dir.name, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}")
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def client(self):
        """A blocking client (for tests to look at what frontends wrote)."""
        import redis

        return redis.Redis(**self.url.client_options())

    @property
    def address(self) -> str:
        """The URL as `--state` takes it (with the password)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"
