"""DualCache, in-memory layer only (the Redis side is in tests/integration/test_cache_redis.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import asgi_llm_guard.cache as cache_module
from asgi_llm_guard.cache import CacheUnavailable, DualCache
from asgi_llm_guard.errors import GuardError


class Clock:
    """A fake ``monotonic`` for the cache module only (asyncio keeps the real one)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(cache_module, "monotonic", fake)
    return fake


async def test_get_set_delete() -> None:
    cache = DualCache()
    assert await cache.async_get_cache("missing") is None
    await cache.async_set_cache("k", {"a": [1, 2]})
    assert await cache.async_get_cache("k") == {"a": [1, 2]}
    await cache.async_set_cache("k", "v2")
    assert await cache.async_get_cache("k") == "v2"
    await cache.async_delete_cache("k")
    assert await cache.async_get_cache("k") is None
    await cache.async_delete_cache("k")  # deleting a missing key is fine


async def test_any_python_object_is_stored_as_given() -> None:
    cache = DualCache()
    marker = object()
    await cache.async_set_cache("obj", marker)
    assert await cache.async_get_cache("obj") is marker
    await cache.async_set_cache("json-looking", '{"a": 1}')
    assert await cache.async_get_cache("json-looking") == '{"a": 1}'  # not json-decoded like LiteLLM's


async def test_sync_methods_share_the_memory_layer() -> None:
    cache = DualCache()
    cache.set_cache("k", 1)
    assert await cache.async_get_cache("k") == 1
    await cache.async_set_cache("k2", 2)
    assert cache.get_cache("k2") == 2
    assert cache.increment_cache("n", 2) == 2
    assert cache.increment_cache("n", 3) == 5
    assert cache.batch_get_cache(["k", "nope", "n"]) == [1, None, 5]
    cache.delete_cache("k")
    assert cache.get_cache("k") is None


async def test_ttl_expiry_with_a_fake_clock(clock: Clock) -> None:
    cache = DualCache()
    await cache.async_set_cache("k", "v", ttl=10)
    await cache.async_set_cache("forever", "v")
    clock.now += 9.99
    assert await cache.async_get_cache("k") == "v"
    clock.now += 0.02
    assert await cache.async_get_cache("k") is None
    assert cache.get_cache("k") is None
    assert await cache.async_get_cache("forever") == "v"


async def test_ttl_expiry_real_time_and_float_ttl() -> None:
    cache = DualCache()
    await cache.async_set_cache("k", "v", ttl=0.05)
    assert await cache.async_get_cache("k") == "v"
    await asyncio.sleep(0.08)
    assert await cache.async_get_cache("k") is None


async def test_default_ttl_applies_when_no_ttl_given(clock: Clock) -> None:
    cache = DualCache(default_ttl=5)
    await cache.async_set_cache("k", "v")
    await cache.async_set_cache("longer", "v", ttl=60)
    assert await cache.async_increment_cache("n", 1) == 1
    clock.now += 5.01
    assert await cache.async_get_cache("k") is None
    assert await cache.async_get_cache("n") is None
    assert await cache.async_get_cache("longer") == "v"


async def test_expired_entries_are_purged(clock: Clock) -> None:
    cache = DualCache(max_size=4)
    for i in range(4):
        cache.set_cache(f"k{i}", i, ttl=1)
    clock.now += 2
    # the periodic sweep (every max_size writes) drops the expired entries
    for i in range(4):
        cache.set_cache(f"fresh{i}", i)
    assert len(cache._memory) == 4
    assert cache.batch_get_cache([f"fresh{i}" for i in range(4)]) == [0, 1, 2, 3]


async def test_lru_eviction_at_max_size() -> None:
    cache = DualCache(max_size=3)
    for key in ("a", "b", "c"):
        await cache.async_set_cache(key, key)
    await cache.async_set_cache("d", "d")  # evicts "a", the least recently used
    assert await cache.async_batch_get_cache(["a", "b", "c", "d"]) == [None, "b", "c", "d"]
    assert len(cache._memory) == 3


async def test_reads_refresh_recency() -> None:
    cache = DualCache(max_size=3)
    for key in ("a", "b", "c"):
        await cache.async_set_cache(key, key)
    assert await cache.async_get_cache("a") == "a"  # "a" is now the most recent; "b" the least
    await cache.async_set_cache("d", "d")
    assert await cache.async_get_cache("b") is None
    assert await cache.async_get_cache("a") == "a"
    assert cache.get_cache("c") == "c"  # sync reads refresh too: "d" is now the least recent
    await cache.async_set_cache("e", "e")
    assert cache.get_cache("d") is None
    assert cache.batch_get_cache(["a", "c", "e"]) == ["a", "c", "e"]


async def test_increments_refresh_recency() -> None:
    cache = DualCache(max_size=2)
    await cache.async_increment_cache("a", 1)
    await cache.async_set_cache("b", "b")
    await cache.async_increment_cache("a", 1)
    await cache.async_set_cache("c", "c")
    assert await cache.async_get_cache("a") == 2
    assert await cache.async_get_cache("b") is None


async def test_increment_returns_new_value_and_starts_from_zero() -> None:
    cache = DualCache()
    assert await cache.async_increment_cache("n", 1) == 1
    assert await cache.async_increment_cache("n", 41) == 42
    assert await cache.async_increment_cache("n", -2) == 40
    assert await cache.async_get_cache("n") == 40
    await cache.async_set_cache("preset", 10)
    assert await cache.async_increment_cache("preset", 5) == 15


async def test_increment_int_stays_int_and_float_is_float() -> None:
    cache = DualCache()
    result = await cache.async_increment_cache("i", 3)
    assert result == 3 and type(result) is int
    result = await cache.async_increment_cache("i", 2)
    assert result == 5 and type(result) is int
    result = await cache.async_increment_cache("f", 0.5)
    assert result == 0.5 and type(result) is float
    result = await cache.async_increment_cache("f", 1)
    assert result == 1.5 and type(result) is float
    result = await cache.async_increment_cache("i", 0.25)
    assert result == 5.25 and type(result) is float


async def test_increment_on_an_expired_key_starts_from_zero(clock: Clock) -> None:
    cache = DualCache()
    assert await cache.async_increment_cache("n", 5, ttl=1) == 5
    clock.now += 1.5
    assert await cache.async_increment_cache("n", 1, ttl=1) == 1


async def test_increment_ttl_applies_at_creation_only(clock: Clock) -> None:
    cache = DualCache()
    assert await cache.async_increment_cache("n", 1, ttl=10) == 1
    clock.now += 6
    # a later ttl does not extend (slide) the window of an existing counter
    assert await cache.async_increment_cache("n", 1, ttl=10) == 2
    clock.now += 4.5
    assert await cache.async_get_cache("n") is None
    # a key without expiry gets the ttl of the first increment that brings one
    await cache.async_set_cache("plain", 1)
    assert await cache.async_increment_cache("plain", 1, ttl=2) == 2
    clock.now += 2.5
    assert await cache.async_get_cache("plain") is None


async def test_increment_of_a_non_number_is_a_type_error() -> None:
    cache = DualCache()
    await cache.async_set_cache("text", "abc")
    with pytest.raises(TypeError, match="holding a str"):
        await cache.async_increment_cache("text", 1)
    with pytest.raises(TypeError, match="int or a float"):
        await cache.async_increment_cache("n", "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int or a float"):
        await cache.async_increment_cache("n", True)
    with pytest.raises(ValueError, match="finite"):
        await cache.async_increment_cache("n", float("nan"))


async def test_concurrent_increments_sum_exactly() -> None:
    cache = DualCache()

    async def bump() -> int | float:
        await asyncio.sleep(0)
        return await cache.async_increment_cache("counter", 1, ttl=60)

    results = await asyncio.gather(*(bump() for _ in range(1000)))
    assert await cache.async_get_cache("counter") == 1000
    assert sorted(results) == list(range(1, 1001))  # every caller saw a distinct new value


async def test_batch_get_order_and_misses() -> None:
    cache = DualCache()
    await cache.async_set_cache("a", 1)
    await cache.async_set_cache("c", [3])
    assert await cache.async_batch_get_cache(["c", "b", "a", "c"]) == [[3], None, 1, [3]]
    assert await cache.async_batch_get_cache([]) == []
    assert await cache.async_batch_get_cache(iter(["a"])) == [1]


async def test_batch_set() -> None:
    cache = DualCache()
    await cache.async_batch_set_cache([("a", 1), ("b", "two")], ttl=60)
    assert await cache.async_batch_get_cache(["a", "b"]) == [1, "two"]


async def test_litellm_kwargs_are_accepted() -> None:
    cache = DualCache()
    await cache.async_set_cache("k", "v", ttl=5, local_only=True, parent_otel_span=None)
    assert await cache.async_get_cache("k", parent_otel_span=None, local_only=True) == "v"
    assert await cache.async_get_cache("k", parent_otel_span=None) == "v"
    assert await cache.async_increment_cache("n", 1, parent_otel_span=None, local_only=False) == 1
    assert await cache.async_increment_cache(key="n", value=2, ttl=10, parent_otel_span=None) == 3
    assert await cache.async_batch_get_cache(["k", "n"], parent_otel_span=None, local_only=True) == ["v", 3]
    await cache.async_batch_set_cache([("x", 1)], local_only=False, parent_otel_span=None)
    await cache.async_delete_cache("k", parent_otel_span=None)
    cache.set_cache("s", 1, local_only=True, parent_otel_span=None)
    assert cache.get_cache("s", parent_otel_span=None) == 1
    assert cache.increment_cache("s", 1, local_only=True) == 2
    cache.delete_cache("s", parent_otel_span=None)
    assert await cache.async_get_cache("k") is None
    assert cache.get_cache("s") is None


async def test_aclose_without_redis_is_a_noop() -> None:
    async with DualCache() as cache:
        await cache.async_set_cache("k", 1)
    await cache.aclose()
    assert await cache.async_get_cache("k") == 1
    assert cache.redis_client is None
    assert cache.owns_connections is False


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_size": "10"}, "max_size must be an int"),
        ({"max_size": True}, "max_size must be an int"),
        ({"default_ttl": "60"}, "default_ttl must be a number of seconds"),
        ({"redis_failure": 1}, "redis_failure must be 'closed' or 'local'"),
        ({"local_ttl": "1"}, "local_ttl must be a number"),
        ({"namespace": b"x:"}, "namespace must be a str"),
        ({"redis_timeout": None}, "redis_timeout must be a number"),
        ({"redis_max_connections": 2.5}, "redis_max_connections must be an int"),
        ({"redis_max_connections": True}, "redis_max_connections must be an int"),
        ({"redis_pool_timeout": None}, "redis_pool_timeout must be a number"),
        ({"redis_url": 6379}, "redis_url must be a non-empty str"),
        ({"redis": object()}, "redis= must be a redis.asyncio.Redis client"),
    ],
)
def test_constructor_type_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        DualCache(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_size": 0}, "max_size must be at least 1"),
        ({"default_ttl": 0}, "default_ttl must be a positive number"),
        ({"default_ttl": -1.5}, "default_ttl must be a positive number"),
        ({"redis_failure": "open"}, "redis_failure must be 'closed' .* or 'local'"),
        ({"local_ttl": -1}, "local_ttl must be 0"),
        ({"redis_timeout": 0}, "redis_timeout must be a positive number"),
        ({"redis_max_connections": 0}, "redis_max_connections must be at least 1"),
        ({"redis_pool_timeout": 0}, "redis_pool_timeout must be a positive number"),
        ({"redis_pool_timeout": float("inf")}, "redis_pool_timeout must be a positive number"),
        ({"redis_url": "redis://localhost:6379", "redis": object()}, "either redis_url= .* or redis="),
        ({"redis_url": "http://localhost:6379"}, "redis_url is not a valid Redis URL"),
    ],
)
def test_constructor_value_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DualCache(**kwargs)


def test_constructor_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        DualCache(100)  # type: ignore[call-arg]


def test_sync_redis_client_is_rejected() -> None:
    import redis

    client = redis.Redis()  # never connects
    try:
        with pytest.raises(TypeError, match=r"pass redis\.asyncio\.Redis"):
            DualCache(redis=client)
    finally:
        client.close()


async def test_call_argument_validation() -> None:
    cache = DualCache()
    with pytest.raises(TypeError, match="cache keys must be str"):
        await cache.async_get_cache(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cache keys must be str"):
        await cache.async_batch_get_cache(["a", 1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="ttl must be a positive number"):
        await cache.async_set_cache("k", 1, ttl=0)
    with pytest.raises(TypeError, match="ttl must be a number of seconds"):
        await cache.async_set_cache("k", 1, ttl="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl must be a positive number"):
        cache.increment_cache("k", 1, ttl=-1)


def test_cache_unavailable_is_a_503_guard_error() -> None:
    exc = CacheUnavailable("127.0.0.1:6379", operation="async_get_cache")
    assert isinstance(exc, GuardError)
    assert exc.status_code == 503
    assert exc.message == "cache unavailable: Redis at 127.0.0.1:6379 is unreachable"
    assert exc.headers == {"Retry-After": "1"}
    assert exc.operation == "async_get_cache"


def test_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ImportError, match=r"asgi-llm-guard\[redis\]"):
        DualCache(redis_url="redis://localhost:6379/0")
    # memory-only caches never import redis
    assert DualCache().redis_client is None


def test_module_exports() -> None:
    assert cache_module.__all__ == ["CacheBusy", "CacheUnavailable", "DualCache"]


async def test_a_connection_slot_handed_to_a_waiter_cancelled_at_that_moment_goes_to_the_next() -> None:
    # The race a request cancelled (client gone) just as a Redis connection freed up for it: the slot must pass
    # on, or the cache loses one connection for good at each such race.
    slots = cache_module._ConnectionSlots(1, timeout=5.0)
    await slots.__aenter__()
    unlucky = asyncio.ensure_future(slots.__aenter__())
    await asyncio.sleep(0)  # waiting
    await slots.__aexit__(None, None, None)  # hands the slot to the waiter...
    unlucky.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await unlucky
    await asyncio.wait_for(slots.__aenter__(), 1.0)  # free again, at once
