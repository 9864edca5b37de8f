"""A throwaway ``redis-server`` on a free 127.0.0.1 port, for integration tests.

::

    with RedisServer() as server:
        cache = DualCache(redis_url=server.url)
        server.stop()   # simulate an outage
        server.start()  # same port again

Needs the ``redis-server`` binary (Debian/Ubuntu: ``apt-get install redis-server``); a missing binary is an
error, not a skip, because CI installs it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """Start, stop and restart a private ``redis-server`` (no persistence) on one port."""

    def __init__(self, port: int | None = None, *, startup_timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not on PATH: the Redis integration tests need a real server; "
                "install the Debian package `redis-server` (apt-get install redis-server)"
            )
        self._binary = binary
        self.port = port if port is not None else _free_port()
        self.host = "127.0.0.1"
        self._startup_timeout = startup_timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="llm-guard-redis-")
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (on the same port as before) and wait until it answers PING."""
        if self.running:
            return
        self._close_log()
        self._log = open(Path(self._tmp.name) / "redis.log", "ab")  # closed in stop()
        self._process = subprocess.Popen(
            [
                self._binary,
                "--port", str(self.port),
                "--bind", self.host,
                "--save", "",
                "--appendonly", "no",
                "--dir", self._tmp.name,
                "--loglevel", "warning",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if self._process.poll() is not None:
                log = self._read_log()
                self.stop()
                raise RuntimeError(f"redis-server exited at startup on port {self.port}:\n{log}")
            if self.ping():
                return
            if time.monotonic() > deadline:
                log = self._read_log()
                self.stop()
                raise RuntimeError(
                    f"redis-server did not answer PING within {self._startup_timeout}s:\n{log}"
                )
            time.sleep(0.02)

    def ping(self) -> bool:
        """Whether the server answers ``PING`` right now."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and wait until the port is closed."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        self._close_log()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _read_log(self) -> str:
        try:
            return (Path(self._tmp.name) / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
