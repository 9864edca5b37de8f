"""DualCache against a real redis-server (tests/redis_server.py): values, TTLs, atomic counters across
replicas and processes, the local read layer, and both failure modes while Redis is down."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as redis_asyncio

from asgi_llm_guard.cache import CacheBusy, CacheUnavailable, DualCache
from tests.redis_server import RedisServer
from tests.test_soak import soak_count

ROOT = Path(__file__).resolve().parents[2]
LOGGER = "asgi_llm_guard.cache"


def _ns() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


@asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[Any]:
    client = redis_asyncio.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def dual_cache(**kwargs: Any) -> AsyncIterator[DualCache]:
    cache = DualCache(**kwargs)
    try:
        yield cache
    finally:
        await cache.aclose()


def _cache_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


async def test_get_set_delete_round_trip_json_values(redis_url: str) -> None:
    ns = _ns()
    async with dual_cache(redis_url=redis_url, namespace=ns) as cache, raw_client(redis_url) as raw:
        values: dict[str, Any] = {
            "int": 7,
            "float": 1.25,
            "str": "héllo",
            "dict": {"a": [1, 2, {"b": None}], "ok": True},
            "list": [1, "two", 3.0],
        }
        for key, value in values.items():
            await cache.async_set_cache(key, value)
        # the values live in Redis, JSON-encoded, under the namespace
        assert orjson.loads(await raw.get(ns + "dict")) == values["dict"]
        assert await raw.get("dict") is None
        for key, value in values.items():
            got = await cache.async_get_cache(key)
            assert got == value and type(got) is type(value)
        async with dual_cache(redis_url=redis_url, namespace=ns) as other:
            for key, value in values.items():
                got = await other.async_get_cache(key)
                assert got == value and type(got) is type(value)
            await other.async_delete_cache("str")
            assert await other.async_get_cache("str") is None
        assert await raw.exists(ns + "str") == 0
        await cache.async_delete_cache("int")
        assert await cache.async_get_cache("int") is None
        assert await raw.exists(ns + "int") == 0


async def test_values_that_are_not_json_are_a_type_error(redis_url: str) -> None:
    async with dual_cache(redis_url=redis_url, namespace=_ns()) as cache:
        with pytest.raises(TypeError, match="local_only=True"):
            await cache.async_set_cache("k", object())
        marker = object()
        await cache.async_set_cache("k", marker, local_only=True)  # memory keeps any object
        assert await cache.async_get_cache("k", local_only=True) is marker


async def test_ttl_expires_in_redis(redis_url: str) -> None:
    ns = _ns()
    async with dual_cache(redis_url=redis_url, namespace=ns) as cache, raw_client(redis_url) as raw:
        await cache.async_set_cache("short", "v", ttl=0.2)
        await cache.async_set_cache("default", "v")
        assert 0 < await raw.pttl(ns + "short") <= 200
        assert await raw.pttl(ns + "default") == -1  # no default_ttl: no expiry
        await asyncio.sleep(0.3)
        assert await raw.exists(ns + "short") == 0
        assert await cache.async_get_cache("short") is None
        assert await cache.async_get_cache("default") == "v"
    async with (
        dual_cache(redis_url=redis_url, namespace=ns, default_ttl=30) as cache,
        raw_client(redis_url) as raw,
    ):
        await cache.async_set_cache("k", "v")
        assert 29_000 < await raw.pttl(ns + "k") <= 30_000


async def test_increment_semantics(redis_url: str) -> None:
    ns = _ns()
    async with dual_cache(redis_url=redis_url, namespace=ns) as cache, raw_client(redis_url) as raw:
        first = await cache.async_increment_cache("i", 1)
        assert first == 1 and type(first) is int
        second = await cache.async_increment_cache("i", 41)
        assert second == 42 and type(second) is int
        got = await cache.async_get_cache("i")
        assert got == 42 and type(got) is int

        f = await cache.async_increment_cache("f", 0.5)
        assert f == 0.5 and type(f) is float
        f = await cache.async_increment_cache("f", 1)  # an int added to a float counter: a float
        assert f == 1.5 and type(f) is float
        f = await cache.async_increment_cache("i", 0.25)  # a float added to an int counter: a float
        assert f == 42.25 and type(f) is float

        # the ttl is applied when the counter is created, and not pushed back by later increments
        assert await cache.async_increment_cache("ttl", 1, ttl=10) == 1
        assert 9_000 < await raw.pttl(ns + "ttl") <= 10_000
        await raw.pexpire(ns + "ttl", 5_000)
        assert await cache.async_increment_cache("ttl", 1, ttl=10) == 2
        assert await raw.pttl(ns + "ttl") <= 5_000
        # a counter without expiry gets the ttl of the first increment that brings one
        assert await cache.async_increment_cache("plain", 1) == 1
        assert await raw.pttl(ns + "plain") == -1
        assert await cache.async_increment_cache("plain", 1, ttl=0.2) == 2
        assert 0 < await raw.pttl(ns + "plain") <= 200
        await asyncio.sleep(0.3)
        assert await cache.async_increment_cache("plain", 1) == 1  # expired: starts from 0 again

        # a value set through the cache can be incremented
        await cache.async_set_cache("preset", 10)
        assert await cache.async_increment_cache("preset", 5) == 15
        await cache.async_set_cache("text", "abc")
        with pytest.raises(redis_asyncio.ResponseError):
            await cache.async_increment_cache("text", 1)


async def test_increment_script_survives_a_script_cache_flush(redis_url: str) -> None:
    async with dual_cache(redis_url=redis_url, namespace=_ns()) as cache, raw_client(redis_url) as raw:
        assert await cache.async_increment_cache("n", 1) == 1
        await raw.script_flush()
        assert await cache.async_increment_cache("n", 1) == 2


async def test_counters_are_shared_by_replicas_and_never_stale(redis_url: str) -> None:
    ns = _ns()
    async with (
        dual_cache(redis_url=redis_url, namespace=ns) as a,
        dual_cache(redis_url=redis_url, namespace=ns) as b,
    ):
        assert await a.async_increment_cache("rpm", 1, ttl=60) == 1
        assert await b.async_increment_cache("rpm", 1, ttl=60) == 2
        assert await a.async_increment_cache("rpm", 1, ttl=60) == 3
        assert await b.async_get_cache("rpm") == 3
        assert await b.async_increment_cache("rpm", 10) == 13
        assert await a.async_get_cache("rpm") == 13  # straight after b's write: not stale from memory
        assert await a.async_batch_get_cache(["rpm"]) == [13]

        # a value a set (so in its read layer) and then incremented elsewhere is read from Redis again
        await a.async_set_cache("tokens", 100)
        assert await a.async_increment_cache("tokens", 1) == 101
        assert await b.async_increment_cache("tokens", 1) == 102
        assert await a.async_get_cache("tokens") == 102
        assert await a.async_batch_get_cache(["tokens", "rpm"]) == [102, 13]


async def test_memory_copy_of_a_counter_ends_on_the_latest_value(redis_url: str) -> None:
    # replies of concurrent increments arrive out of order; the copy kept for local_only reads and
    # redis_failure="local" must still end on Redis's final value
    async with dual_cache(redis_url=redis_url, namespace=_ns()) as cache:
        for _ in range(3):
            await asyncio.gather(*(cache.async_increment_cache("up", 1) for _ in range(50)))
            await asyncio.gather(*(cache.async_increment_cache("down", -2) for _ in range(50)))
        assert await cache.async_get_cache("up") == 150
        assert await cache.async_get_cache("up", local_only=True) == 150
        assert cache.get_cache("down") == -300


async def test_local_read_layer_serves_own_writes_for_local_ttl(redis_url: str) -> None:
    ns = _ns()
    async with (
        dual_cache(redis_url=redis_url, namespace=ns, local_ttl=0.2) as a,
        dual_cache(redis_url=redis_url, namespace=ns) as b,
    ):
        await a.async_set_cache("cfg", "v1")
        await b.async_set_cache("cfg", "v2")
        assert await a.async_get_cache("cfg") == "v1"  # a's own write, served from memory for local_ttl
        await asyncio.sleep(0.25)
        assert await a.async_get_cache("cfg") == "v2"
        # values a only read are not kept in memory: b's next write is seen at once
        await b.async_set_cache("cfg", "v3")
        assert await a.async_get_cache("cfg") == "v3"
    async with (
        dual_cache(redis_url=redis_url, namespace=ns, local_ttl=0) as a,
        dual_cache(redis_url=redis_url, namespace=ns) as b,
    ):
        await a.async_set_cache("cfg", "v4")
        await b.async_set_cache("cfg", "v5")
        assert await a.async_get_cache("cfg") == "v5"  # local_ttl=0: no read layer


async def test_batch_get_and_set(redis_url: str) -> None:
    ns = _ns()
    async with (
        dual_cache(redis_url=redis_url, namespace=ns) as a,
        dual_cache(redis_url=redis_url, namespace=ns) as b,
        raw_client(redis_url) as raw,
    ):
        await a.async_batch_set_cache([("x", 1), ("y", {"z": 2})], ttl=30)
        assert 29_000 < await raw.pttl(ns + "y") <= 30_000
        await b.async_increment_cache("n", 5)
        assert await a.async_batch_get_cache(["y", "missing", "n", "x", "y"]) == [
            {"z": 2},
            None,
            5,
            1,
            {"z": 2},
        ]
        assert await b.async_batch_get_cache(["x", "y", "nope"]) == [1, {"z": 2}, None]
        assert await a.async_batch_get_cache([]) == []


async def test_local_only_never_touches_redis(redis_url: str) -> None:
    ns = _ns()
    async with dual_cache(redis_url=redis_url, namespace=ns) as cache, raw_client(redis_url) as raw:
        await cache.async_set_cache("k", "local", local_only=True)
        assert await cache.async_increment_cache("n", 3, local_only=True) == 3
        await cache.async_batch_set_cache([("b", 1)], local_only=True)
        assert await raw.keys(ns + "*") == []
        assert await cache.async_get_cache("k", local_only=True) == "local"
        assert await cache.async_batch_get_cache(["k", "n", "b"], local_only=True) == ["local", 3, 1]
        assert await cache.async_get_cache("k") is None  # the plain read asks Redis, which has nothing
        await cache.async_delete_cache("k", local_only=True)
        assert await cache.async_get_cache("k", local_only=True) is None

    # nothing listens on this port, and a closed-mode cache still answers local_only calls, silently
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    async with dual_cache(redis_url=f"redis://127.0.0.1:{dead_port}/0") as cache:
        await cache.async_set_cache("k", 1, local_only=True)
        assert await cache.async_increment_cache("k", 1, local_only=True) == 2
        assert await cache.async_get_cache("k", local_only=True) == 2
        await cache.async_delete_cache("k", local_only=True)
        with pytest.raises(CacheUnavailable):
            await cache.async_get_cache("k")


_CHILD = """
import asyncio, sys
import orjson
from asgi_llm_guard.cache import DualCache

async def main() -> None:
    url, namespace, key = sys.argv[1:4]
    async with DualCache(redis_url=url, namespace=namespace) as cache:
        await cache.async_get_cache("warm-up")  # connected before the start signal
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        calls = int(sys.argv[4])
        results = await asyncio.gather(
            *(cache.async_increment_cache(key, 1, ttl=60) for _ in range(calls)), return_exceptions=True
        )
        errors = sorted({repr(r) for r in results if isinstance(r, BaseException)})
        values = [r for r in results if isinstance(r, int)]
        print(orjson.dumps({"values": values, "errors": errors}).decode(), flush=True)

asyncio.run(main())
"""


async def test_increments_from_two_processes_sum_exactly(redis_url: str) -> None:
    # 2,000 concurrent increments per process, far more than the 100 connections of a process's pool: the calls
    # beyond it wait for a connection. Regression: redis-py's asyncio pool raised MaxConnectionsError at the
    # 101st, which the cache took for "Redis unreachable" (503).
    ns, calls = _ns(), 2_000
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CHILD,
            redis_url,
            ns,
            "shared",
            str(calls),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    try:
        with anyio.fail_after(60):
            for proc in procs:
                assert proc.stdout is not None
                line = await proc.stdout.readline()
                if line.strip() != b"ready":
                    _, err = await proc.communicate()
                    pytest.fail(f"child did not start: {line!r}\n{err.decode(errors='replace')}")
            outputs = await asyncio.gather(*(proc.communicate(b"go\n") for proc in procs))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    seen: list[int] = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode(errors="replace")
        results = orjson.loads(out.splitlines()[-1])
        assert results["errors"] == []
        assert len(results["values"]) == calls
        seen.extend(results["values"])
    # every one of the 4,000 increments got its own value: atomic across processes
    assert sorted(seen) == list(range(1, 2 * calls + 1))
    async with dual_cache(redis_url=redis_url, namespace=ns) as cache:
        assert await cache.async_get_cache("shared") == 2 * calls


@contextmanager
def restarted_at_end(server: RedisServer) -> Iterator[None]:
    try:
        yield
    finally:
        if not server.running:
            server.start()


async def _within(seconds: float, call: Callable[[], Awaitable[Any]]) -> Any:
    start = time.monotonic()
    with anyio.fail_after(seconds + 3):
        try:
            return await call()
        finally:
            assert time.monotonic() - start < seconds, "the cache call took too long while Redis was down"


async def test_closed_mode_answers_503_fast_while_redis_is_down_then_recovers(
    redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    ns = _ns()
    with restarted_at_end(redis_server):
        async with dual_cache(redis_url=redis_url, namespace=ns) as cache:
            assert await cache.async_increment_cache("secret-counter", 1) == 1
            redis_server.stop()
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: cache.async_get_cache("secret-counter"),
                lambda: cache.async_set_cache("secret-key", "v"),
                lambda: cache.async_increment_cache("secret-counter", 1),
                lambda: cache.async_delete_cache("secret-counter"),
                lambda: cache.async_batch_get_cache(["secret-counter", "other"]),
                lambda: cache.async_batch_set_cache([("secret-key", 1)]),
            ]
            for call in calls:
                with pytest.raises(CacheUnavailable) as info:
                    await _within(2.0, call)
                assert info.value.status_code == 503
                assert info.value.message == (
                    f"cache unavailable: Redis at 127.0.0.1:{redis_server.port} is unreachable"
                )
            warnings = _cache_records(caplog, logging.WARNING)
            assert len(warnings) == 1, [r.getMessage() for r in warnings]  # one line per outage
            message = warnings[0].getMessage()
            assert f"127.0.0.1:{redis_server.port}" in message
            assert "async_get_cache" in message and "Error" in message and "503" in message
            assert all("secret" not in r.getMessage() for r in caplog.records)
            assert _cache_records(caplog, logging.INFO) == []

            redis_server.start()
            await cache.async_set_cache("after", {"ok": True})
            assert await cache.async_increment_cache("secret-counter", 1) == 1  # fresh server, no data
            infos = _cache_records(caplog, logging.INFO)
            assert len(infos) == 1 and "reachable again" in infos[0].getMessage()
            async with dual_cache(redis_url=redis_url, namespace=ns) as other:
                assert await other.async_get_cache("after") == {"ok": True}

            # a second outage logs a second (single) warning
            redis_server.stop()
            with pytest.raises(CacheUnavailable):
                await _within(2.0, lambda: cache.async_get_cache("after-outage"))
            with pytest.raises(CacheUnavailable):
                await _within(2.0, lambda: cache.async_get_cache("after-outage"))
            assert len(_cache_records(caplog, logging.WARNING)) == 2


async def test_local_mode_serves_from_memory_while_redis_is_down(
    redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    ns = _ns()
    with restarted_at_end(redis_server):
        async with dual_cache(redis_url=redis_url, namespace=ns, redis_failure="local", local_ttl=0) as cache:
            await cache.async_set_cache("secret-key", "v", ttl=60)
            assert await cache.async_increment_cache("secret-counter", 5, ttl=60) == 5
            redis_server.stop()

            assert await _within(2.0, lambda: cache.async_get_cache("secret-key")) == "v"
            # counters continue from the last value this process saw
            assert await _within(2.0, lambda: cache.async_increment_cache("secret-counter", 1)) == 6
            await _within(2.0, lambda: cache.async_set_cache("during", [1, 2]))
            assert await _within(2.0, lambda: cache.async_get_cache("during")) == [1, 2]
            assert await _within(
                2.0, lambda: cache.async_batch_get_cache(["secret-key", "during", "nope"])
            ) == [
                "v",
                [1, 2],
                None,
            ]
            await _within(2.0, lambda: cache.async_delete_cache("secret-key"))
            assert await _within(2.0, lambda: cache.async_get_cache("secret-key")) is None

            warnings = _cache_records(caplog, logging.WARNING)
            assert len(warnings) == 1, [r.getMessage() for r in warnings]
            message = warnings[0].getMessage()
            assert f"127.0.0.1:{redis_server.port}" in message and "memory" in message
            assert all("secret" not in r.getMessage() for r in caplog.records)

            redis_server.start()
            # Redis is the source of truth again (the restarted server is empty)
            assert await cache.async_get_cache("during") is None
            assert await cache.async_increment_cache("secret-counter", 1) == 1
            infos = _cache_records(caplog, logging.INFO)
            assert len(infos) == 1 and "reachable again" in infos[0].getMessage()


async def test_a_silent_server_does_not_hang_the_cache(caplog: pytest.LogCaptureFixture) -> None:
    # accepts TCP connections (kernel backlog) and never answers a byte
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        async with dual_cache(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.3) as cache:
            with pytest.raises(CacheUnavailable):
                await _within(1.5, lambda: cache.async_increment_cache("n", 1))
        async with dual_cache(
            redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.3, redis_failure="local"
        ) as cache:
            assert await _within(1.5, lambda: cache.async_increment_cache("n", 1)) == 1
    assert len(_cache_records(caplog, logging.WARNING)) == 2  # one per cache


async def test_aclose_closes_the_client_it_built(redis_url: str) -> None:
    async with raw_client(redis_url) as raw:
        baseline = len(await raw.client_list())
        cache = DualCache(redis_url=redis_url, namespace=_ns())
        assert cache.owns_connections is True
        try:
            await asyncio.gather(*(cache.async_increment_cache("n", 1) for _ in range(5)))
            assert len(await raw.client_list()) > baseline
        finally:
            await cache.aclose()
        with anyio.fail_after(5):
            while len(await raw.client_list()) > baseline:
                await asyncio.sleep(0.02)
        await cache.aclose()  # idempotent
        with pytest.raises(RuntimeError, match="aclose"):
            await cache.async_get_cache("n")
        assert await cache.async_get_cache("n", local_only=True) == 5  # memory still answers


async def test_a_client_passed_in_is_used_and_left_open(redis_url: str) -> None:
    ns = _ns()
    async with raw_client(redis_url) as client:
        cache = DualCache(redis=client, namespace=ns)
        assert cache.redis_client is client
        assert cache.owns_connections is False
        await cache.async_set_cache("k", {"a": 1})
        assert await cache.async_increment_cache("n", 2) == 2
        assert await client.get(ns + "k") == b'{"a":1}'
        await cache.aclose()
        assert await client.ping() is True
        assert await client.get(ns + "n") == b"2"


async def test_the_middleware_closes_the_caches_connections_on_lifespan_shutdown(redis_server: Any) -> None:
    from asgi_lifespan import LifespanManager

    from asgi_llm_guard import LLMHookMiddleware

    from ..apps import Downstream

    cache = DualCache(redis_url=redis_server.url)
    await cache.async_set_cache("warm", 1)
    down = Downstream()
    async with LifespanManager(LLMHookMiddleware(down, cache=cache)):
        assert cache.redis_client is not None
    assert down.lifespan == ["lifespan.startup", "lifespan.shutdown"]
    with pytest.raises(RuntimeError):
        await cache.async_get_cache("never-set-so-asked-of-redis")


# -- connection pool: waiting for a connection is normal; a wait past redis_pool_timeout is an overload ---------

# Busy-waits on the server for ARGV[1] microseconds: Redis answers nobody meanwhile, as an overloaded one would.
_STALL_LUA = """
local start = redis.call('TIME')
repeat
  local now = redis.call('TIME')
until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) >= tonumber(ARGV[1])
return 1
"""


@asynccontextmanager
async def redis_stalled(url: str, seconds: float) -> AsyncIterator[None]:
    """Redis answers no command for ``seconds`` from entering the block (the calls queue on its sockets)."""
    async with raw_client(url) as raw:
        await raw.ping()  # connected, so the script goes out at once
        stall = asyncio.ensure_future(raw.eval(_STALL_LUA, 0, int(seconds * 1_000_000)))
        await asyncio.sleep(0.1)  # the script is on the server before the block's commands
        try:
            yield
        finally:
            await stall


@pytest.mark.parametrize("redis_failure", ["closed", "local"])
async def test_a_pool_busy_past_its_timeout_is_cache_busy_not_an_outage(
    redis_server: RedisServer, redis_url: str, redis_failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    options: dict[str, Any] = {"redis_max_connections": 2, "redis_pool_timeout": 0.3, "redis_timeout": 5.0}
    async with dual_cache(redis_url=redis_url, namespace=_ns(), redis_failure=redis_failure, **options) as cache:
        await cache.async_get_cache("warm-up")
        async with redis_stalled(redis_url, 1.5):
            # two calls take the two connections and wait for Redis; the other three wait 0.3 s for a connection
            started = time.monotonic()
            results = await asyncio.gather(
                *(cache.async_increment_cache("n", 1) for _ in range(5)), return_exceptions=True
            )
            took = time.monotonic() - started
        assert sorted(results[:2]) == [1, 2]  # type: ignore[type-var]
        for busy in results[2:]:
            # even with redis_failure="local": Redis holds the counts, so no call is counted in memory instead
            assert isinstance(busy, CacheBusy)
            assert busy.status_code == 503 and busy.headers == {"Retry-After": "1"}
            assert busy.message == (
                f"cache busy: all 2 connections to Redis at 127.0.0.1:{redis_server.port} stayed in use for 0.3s"
            )
        assert 1.0 < took < 4.0
        warnings = _cache_records(caplog, logging.WARNING)
        assert len(warnings) == 1, [r.getMessage() for r in warnings]  # one line per busy spell
        assert "stayed in use" in warnings[0].getMessage() and "unreachable" not in warnings[0].getMessage()

        assert await cache.async_increment_cache("n", 1) == 3
        infos = _cache_records(caplog, logging.INFO)
        free_again = f"connections to Redis at 127.0.0.1:{redis_server.port} are free again"
        assert [r.getMessage() for r in infos] == [free_again]


_OPERATIONS: dict[str, Callable[[DualCache, int], Awaitable[Any]]] = {
    "async_get_cache": lambda cache, i: cache.async_get_cache(f"k{i}"),
    "async_set_cache": lambda cache, i: cache.async_set_cache(f"k{i}", i),
    "async_batch_set_cache": lambda cache, i: cache.async_batch_set_cache([(f"k{i}", i), (f"j{i}", i)]),
    "async_increment_cache": lambda cache, i: cache.async_increment_cache("n", 1),
    "async_delete_cache": lambda cache, i: cache.async_delete_cache(f"k{i}"),
    "async_batch_get_cache": lambda cache, i: cache.async_batch_get_cache([f"k{i}", f"j{i}"]),
    "async_set_cache_sadd": lambda cache, i: cache.async_set_cache_sadd(f"s{i}", ["a", "b"]),
    "async_get_set_members": lambda cache, i: cache.async_get_set_members(f"s{i}"),
}


@pytest.mark.parametrize("operation", sorted(_OPERATIONS))
async def test_every_redis_operation_waits_for_a_connection_and_a_long_wait_is_busy(
    redis_url: str, operation: str
) -> None:
    call = _OPERATIONS[operation]
    options: dict[str, Any] = {"redis_max_connections": 2, "redis_pool_timeout": 0.3, "redis_timeout": 5.0}
    async with dual_cache(redis_url=redis_url, namespace=_ns(), local_ttl=0, **options) as cache:
        await cache.async_get_cache("warm-up")
        # a short stall: the calls beyond the two connections wait their turn, all succeed
        async with redis_stalled(redis_url, 0.1):
            waited = await asyncio.gather(*(call(cache, i) for i in range(20)), return_exceptions=True)
        assert [r for r in waited if isinstance(r, BaseException)] == []
        # a stall past the pool timeout: the waiting calls are busy, not "Redis unreachable"
        async with redis_stalled(redis_url, 1.0):
            results = await asyncio.gather(*(call(cache, i) for i in range(5)), return_exceptions=True)
        assert [type(r).__name__ for r in results if isinstance(r, BaseException)] == ["CacheBusy"] * 3


async def test_calls_beyond_the_pool_wait_for_a_connection_in_arrival_order(redis_url: str) -> None:
    async with dual_cache(redis_url=redis_url, namespace=_ns(), redis_max_connections=1) as cache:
        await cache.async_get_cache("warm-up")
        async with redis_stalled(redis_url, 0.5):
            results = await asyncio.gather(*(cache.async_increment_cache("n", 1) for _ in range(50)))
        assert results == list(range(1, 51))  # one connection, first come first served


async def test_a_call_cancelled_while_waiting_for_a_connection_leaves_no_connection_taken(redis_url: str) -> None:
    options: dict[str, Any] = {"redis_max_connections": 2, "redis_pool_timeout": 0.3}
    async with dual_cache(redis_url=redis_url, namespace=_ns(), **options) as cache:
        await cache.async_get_cache("warm-up")
        async with redis_stalled(redis_url, 0.6):
            calls = [asyncio.ensure_future(cache.async_increment_cache("n", 1)) for _ in range(10)]
            await asyncio.sleep(0.1)
            for call in calls[2:]:
                call.cancel()
            assert sorted(await asyncio.gather(*calls[:2])) == [1, 2]
            assert all(call.cancelled() for call in calls[2:])
        # both connections are free: two calls that each hold one while Redis stalls (longer than the pool
        # timeout) do not wait for each other
        async with redis_stalled(redis_url, 0.6):
            assert sorted(await asyncio.gather(*(cache.async_increment_cache("n", 1) for _ in range(2)))) == [3, 4]


async def test_a_client_passed_in_bounds_the_calls_by_its_own_pool(redis_url: str) -> None:
    client = redis_asyncio.Redis.from_url(redis_url, max_connections=2)  # redis-py's pool: raises when it runs out
    try:
        async with dual_cache(redis=client, namespace=_ns()) as cache:
            results = await asyncio.gather(*(cache.async_increment_cache("n", 1) for _ in range(200)))
            assert sorted(results) == list(range(1, 201))
    finally:
        await client.aclose()


async def test_a_client_pool_that_runs_out_is_cache_busy_not_an_outage(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # more calls at once than the client's pool has connections (the pool is also used elsewhere, say)
    client = redis_asyncio.Redis.from_url(redis_url, max_connections=1)
    try:
        async with dual_cache(redis=client, namespace=_ns(), redis_max_connections=10) as cache:
            results = await asyncio.gather(
                *(cache.async_increment_cache("n", 1) for _ in range(10)), return_exceptions=True
            )
            assert any(isinstance(r, int) for r in results)
            assert any(isinstance(r, BaseException) for r in results)
            assert all(isinstance(r, (int, CacheBusy)) for r in results), results
            assert all("unreachable" not in r.getMessage() for r in caplog.records)
    finally:
        await client.aclose()


@pytest.mark.soak
async def test_soak_the_connection_wait_leaks_no_memory_and_no_task(redis_url: str) -> None:
    # Bursts far over the pool (20 connections), a tenth of each burst cancelled while waiting for a connection:
    # after a warm-up, traced memory and tasks stay flat. LLM_GUARD_SOAK scales it with tests/test_soak.py's run.
    rounds = max(10, soak_count() // 1_000)
    async with dual_cache(redis_url=redis_url, namespace=_ns(), redis_max_connections=20) as cache:

        async def burst() -> None:
            calls = [asyncio.ensure_future(cache.async_increment_cache(f"k{i % 7}", 1)) for i in range(500)]
            await asyncio.sleep(0)  # each call started: the first 20 hold a connection, the others wait for one
            for call in calls[20::10]:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            assert await cache.async_batch_get_cache([f"k{i}" for i in range(7)]) is not None

        tracemalloc.start()
        try:
            tasks_before = len(asyncio.all_tasks())
            for _ in range(rounds // 2):
                await burst()
            gc.collect()
            memory_mid, tasks_mid = tracemalloc.get_traced_memory()[0], len(asyncio.all_tasks())
            for _ in range(rounds - rounds // 2):
                await burst()
            gc.collect()
            memory_end, tasks_end = tracemalloc.get_traced_memory()[0], len(asyncio.all_tasks())
        finally:
            tracemalloc.stop()
        assert tasks_mid == tasks_end == tasks_before
        assert memory_end - memory_mid < 256 * 1024, (memory_mid, memory_end)
        # every call not cancelled counted once, no cancelled one
        total = sum(await cache.async_batch_get_cache([f"k{i}" for i in range(7)]))
        assert total == rounds * (500 - 48)
