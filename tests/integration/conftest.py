from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session; a test may stop and restart it (same port)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The running server's URL (restarted first if an earlier test left it stopped)."""
    if not redis_server.running:
        redis_server.start()
    return redis_server.url
