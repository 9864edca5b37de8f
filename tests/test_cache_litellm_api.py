"""DualCache's LiteLLM-named arguments and methods (the ones LiteLLM's own hooks call), in memory and on a real
redis-server: docs/litellm.md lists them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import asgi_llm_guard.cache as cache_module
from asgi_llm_guard import DualCache
from tests.redis_server import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(cache_module, "monotonic", fake)
    return fake


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@asynccontextmanager
async def caches(server: RedisServer | None, **kwargs: Any) -> AsyncIterator[DualCache]:
    if server is None:
        yield DualCache(**kwargs)
        return
    cache = DualCache(redis_url=server.url, namespace=f"t:{uuid.uuid4().hex[:8]}:", **kwargs)
    try:
        yield cache
    finally:
        await cache.aclose()


@pytest.fixture(params=["memory", "redis"])
def server(request: pytest.FixtureRequest) -> RedisServer | None:
    if request.param == "memory":
        return None
    found: RedisServer = request.getfixturevalue("redis_server")
    return found


async def test_default_in_memory_ttl_is_the_default_ttl_without_redis(clock: Clock) -> None:
    cache = DualCache(default_in_memory_ttl=10)
    assert cache.default_in_memory_ttl == 10
    await cache.async_set_cache("k", 1)
    clock.now += 9
    assert await cache.async_get_cache("k") == 1
    clock.now += 2
    assert await cache.async_get_cache("k") is None


async def test_default_in_memory_ttl_with_redis_is_the_local_read_layer(redis_server: RedisServer) -> None:
    async with caches(redis_server, default_in_memory_ttl=0.05, default_redis_ttl=60) as cache:
        other = DualCache(redis_url=redis_server.url, namespace=cache._namespace)
        try:
            await cache.async_set_cache("k", 1)
            pttl = await cache.redis_client.pttl(cache._namespace + "k")
            assert 0 < pttl <= 60_000  # default_redis_ttl applied to the write
            await other.async_set_cache("k", 2)
            assert await cache.async_get_cache("k") == 1  # its own write, served from memory for 0.05 s
            await asyncio.sleep(0.2)
            assert await cache.async_get_cache("k") == 2  # then read from Redis again
        finally:
            await other.aclose()


async def test_batch_get_tolerates_none_keys(server: RedisServer | None) -> None:
    async with caches(server) as cache:
        await cache.async_set_cache("a", {"n": 1})
        assert await cache.async_batch_get_cache([None, "a", None, "missing"]) == [None, {"n": 1}, None, None]
        assert await cache.async_batch_get_cache([None]) == [None]
        assert cache.batch_get_cache([None, "nothing"]) == [None, None]


async def test_set_cache_pipeline(server: RedisServer | None) -> None:
    async with caches(server) as cache:
        await cache.async_set_cache_pipeline(cache_list=[("a", 1), ("b", {"x": 2})], ttl=60, local_only=False)
        assert await cache.async_batch_get_cache(["a", "b"]) == [1, {"x": 2}]


async def test_increment_cache_pipeline_returns_new_values(server: RedisServer | None) -> None:
    async with caches(server) as cache:
        ops = [
            {"key": "a", "increment_value": 2, "ttl": 60},
            {"key": "b", "increment_value": 1.5, "ttl": None},
            {"key": "a", "increment_value": 3, "ttl": 60},
        ]
        assert await cache.async_increment_cache_pipeline(increment_list=ops, parent_otel_span=None) == [2, 1.5, 5]
        assert await cache.async_get_cache("a") == 5


async def test_set_cache_sadd_builds_a_set(server: RedisServer | None) -> None:
    async with caches(server) as cache:
        await cache.async_set_cache_sadd("s", ["a", "b"], ttl=60)
        await cache.async_set_cache_sadd("s", ["b", "c"])
        assert await cache.async_get_set_members("s") == {"a", "b", "c"}
        assert await cache.async_get_set_members("missing") == set()
