"""The cache handed to hooks: LiteLLM's ``DualCache`` API over a bounded in-memory LRU, optionally on Redis.

Hooks written for LiteLLM call ``cache.async_get_cache(key)``, ``cache.async_set_cache(key, value, ttl=60)``,
``cache.async_increment_cache(key, 1, ttl=60)`` and so on; those calls (and LiteLLM's extra keyword arguments
such as ``parent_otel_span``) work unchanged here. Without Redis everything lives in this process's memory.
With Redis (``redis_url=`` or ``redis=``, the optional extra ``asgi-llm-guard[redis]``) Redis is the source
of truth shared by every replica.

Where this differs from LiteLLM's ``DualCache``, and why:

* **Counters are atomic across replicas.** LiteLLM increments its in-memory copy and Redis separately
  (``INCRBYFLOAT``, then the expiry in another round trip) and its parallel request limiter reads the
  in-memory copy first, so replicas undercount and a limit can be overshot. Here ``async_increment_cache``
  is one Lua script in Redis (``INCRBY`` or ``INCRBYFLOAT``, plus the expiry when the key has none yet):
  one round trip, atomic, and the value returned is Redis's. Counters are never answered from local memory.
* **Reads are not stale across replicas.** LiteLLM copies every Redis hit into memory for its in-memory
  TTL; here only values this process *set* are served from memory, and only for ``local_ttl`` seconds
  (default 1 s), so replicas see each other's writes quickly.
* **Redis outages are not silent.** LiteLLM logs Redis errors and answers ``None`` (a rate limiter then lets
  everything through). Here the default ``redis_failure="closed"`` raises :class:`CacheUnavailable` (a 503),
  and ``redis_failure="local"`` explicitly serves from per-process memory until Redis answers again; either
  way one WARNING line is logged per outage and one INFO line when it recovers. Clients built from
  ``redis_url`` use ``redis_timeout`` (1 s) socket timeouts and one immediate retry, so a call never hangs.
* **A busy pool is waited for, not taken for an outage.** redis-py's asyncio pool (100 connections by
  default) raises ``MaxConnectionsError`` at once when every connection is in use, so a few hundred
  concurrent requests would look like a dead Redis. Here at most ``redis_max_connections`` (100) calls of
  the cache talk to Redis at once; the others queue (first come, first served) for up to
  ``redis_pool_timeout`` (5 s). A call that waits longer raises :class:`CacheBusy`, a 503 with
  ``Retry-After: 1`` (Redis is up but cannot keep pace: an overload, which HTTP answers with 503), in both
  failure modes: serving it from memory while Redis holds the other replicas' counts would split counters
  between the two (an increment kept locally, its release sent to Redis). During an outage, a wait that
  times out is part of the outage and follows ``redis_failure``.
* **Values are returned as stored.** In memory any Python object is kept as is (LiteLLM's in-memory layer
  tries ``json.loads`` on strings); in Redis values are JSON (orjson), so ints, floats, str, bool, None,
  lists and dicts with str keys round-trip. Integer increments stay ``int`` (LiteLLM's come back as float).
* **The sync methods** (``get_cache``, ``set_cache``, ``increment_cache``, ``delete_cache``,
  ``batch_get_cache``) work on the in-memory layer only: a blocking Redis call would stall the event loop.
* **Keys are namespaced** (``namespace="llm_guard:"``) and there is no ``flush_cache`` (it would flush the
  whole Redis database, other applications' keys included).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from time import monotonic
from types import TracebackType
from typing import Any, Literal

import orjson

from .errors import GuardError

__all__ = ["CacheBusy", "CacheUnavailable", "DualCache"]

logger = logging.getLogger("asgi_llm_guard.cache")

Number = int | float
RedisFailure = Literal["closed", "local"]

# KEYS[1]: the key. ARGV[1]: the increment; ARGV[2]: "1" for an integer one; ARGV[3]: the TTL in ms (0: none).
# Incrementing a float-valued key by an int falls back to INCRBYFLOAT (int + float is a float, as in Python).
# The expiry is set only when the key has none yet, so a counter's window is fixed (it never slides).
# Returns {new value (an integer, or the float as a bulk string), PTTL after the call (-1: no expiry)}.
# Lua numbers are doubles: integer counters are exact up to 2**53.
_INCREMENT_LUA = """
local value
if ARGV[2] == '1' then
  value = redis.pcall('INCRBY', KEYS[1], ARGV[1])
  if type(value) == 'table' and value['err'] then
    value = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
  end
else
  value = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
end
local ttl_ms = tonumber(ARGV[3])
local pttl = redis.call('PTTL', KEYS[1])
if ttl_ms > 0 and pttl == -1 then
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  pttl = ttl_ms
end
return {value, pttl}
"""


class CacheUnavailable(GuardError):
    """Raised by a Redis-backed :class:`DualCache` built with ``redis_failure="closed"`` while Redis is down.

    It is a :class:`~asgi_llm_guard.errors.GuardError` with ``status_code`` 503 (and ``Retry-After: 1``),
    so the middleware answers the request with a 503 instead of running hooks on a cache it cannot reach::

        try:
            count = await cache.async_increment_cache(key, 1, ttl=60)
        except CacheUnavailable as exc:
            assert exc.status_code == 503
    """

    def __init__(self, address: str, *, operation: str | None = None, message: str | None = None) -> None:
        super().__init__(
            503,
            message or f"cache unavailable: Redis at {address} is unreachable",
            headers={"Retry-After": "1"},
        )
        self.address = address
        self.operation = operation


class CacheBusy(CacheUnavailable):
    """Raised by a Redis-backed :class:`DualCache` when no connection to Redis freed up within
    ``redis_pool_timeout``: Redis answers, but slower than the calls arrive (an overload, not an outage).

    A :class:`CacheUnavailable` (503, ``Retry-After: 1``), so code that handles one handles both::

        try:
            count = await cache.async_increment_cache(key, 1, ttl=60)
        except CacheBusy as exc:
            print(exc.connections, exc.waited)  # all 100 connections stayed busy for 5.0 s
    """

    def __init__(self, address: str, *, connections: int, waited: float, operation: str | None = None) -> None:
        super().__init__(
            address,
            operation=operation,
            message=(
                f"cache busy: all {connections} connections to Redis at {address} stayed in use for {waited:g}s"
            ),
        )
        self.connections = connections
        self.waited = waited


class _PoolTimeout(Exception):
    """No connection slot freed up in time (turned into :class:`CacheBusy`, or into the outage's outcome)."""


class _ConnectionSlots:
    """At most ``size`` Redis calls at once; the others wait, first come first served, up to ``timeout`` seconds.

    ``async with slots:`` around one Redis call. It matches the client's pool size, so the pool never runs
    out (redis-py's asyncio pool raises at once when it does). Taking a free slot does not yield to the loop.
    """

    __slots__ = ("size", "timeout", "_free", "_waiters")

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self._free = size
        self._waiters: deque[asyncio.Future[bool]] = deque()

    async def __aenter__(self) -> None:
        if self._free and not self._waiters:
            self._free -= 1
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(self.timeout, _expire, waiter)
        try:
            handed = await waiter
        except BaseException:
            # cancelled while waiting; a slot handed over at that very moment goes to the next waiter
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._give()
            else:
                self._discard(waiter)
            raise
        finally:
            timer.cancel()
        if not handed:
            self._discard(waiter)
            raise _PoolTimeout

    async def __aexit__(self, *exc_info: object) -> None:
        self._give()

    def _give(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self._free += 1

    def _discard(self, waiter: asyncio.Future[bool]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class _Entry:
    __slots__ = ("value", "expires_at", "fresh_until")

    def __init__(self, value: Any, expires_at: float | None, fresh_until: float) -> None:
        self.value = value
        # monotonic deadline after which the entry is never returned (None: no expiry)
        self.expires_at = expires_at
        # Redis mode only: until then a plain read may answer from memory instead of asking Redis
        self.fresh_until = fresh_until


class _Memory:
    """A bounded LRU of entries with monotonic expiry. No method awaits, so each one is atomic on the loop."""

    def __init__(self, max_size: int) -> None:
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._max_size = max_size
        self._writes = 0

    def __len__(self) -> int:
        return len(self._data)

    def entry(self, key: str, now: float) -> _Entry | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= now:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return entry

    def get(self, key: str, now: float) -> Any:
        entry = self.entry(key, now)
        return None if entry is None else entry.value

    def put(self, key: str, value: Any, expires_at: float | None, fresh_until: float = 0.0) -> None:
        self._data[key] = _Entry(value, expires_at, fresh_until)
        self._data.move_to_end(key)
        self._after_write()

    def increment(self, key: str, delta: Number, ttl: float | None, now: float) -> Number:
        entry = self.entry(key, now)
        if entry is None:
            new: Number = 0 + delta
            self.put(key, new, None if ttl is None else now + ttl)
            return new
        current = entry.value
        if not _is_number(current):
            raise TypeError(
                f"cannot increment a cache entry holding a {type(current).__name__}: "
                "increment only keys that hold an int or a float (or that do not exist yet)"
            )
        new = current + delta
        entry.value = new
        entry.fresh_until = 0.0
        if entry.expires_at is None and ttl is not None:
            entry.expires_at = now + ttl
        return new

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def _after_write(self) -> None:
        # Expired entries are purged lazily: on read, and in one sweep every max_size writes (amortised O(1)).
        self._writes += 1
        if self._writes >= self._max_size:
            self._writes = 0
            now = monotonic()
            expired = [k for k, e in self._data.items() if e.expires_at is not None and e.expires_at <= now]
            for key in expired:
                del self._data[key]
        while len(self._data) > self._max_size:
            self._data.popitem(last=False)


class _InFlight:
    __slots__ = ("count", "latest")

    def __init__(self) -> None:
        self.count = 0
        self.latest: Number | None = None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(
            f"cache keys must be str, got {type(key).__name__}: pass a string such as f'rpm:{{user}}'"
        )
    return key


def _check_ttl(ttl: object, name: str = "ttl") -> float | None:
    if ttl is None:
        return None
    if not _is_number(ttl):
        raise TypeError(f"{name} must be a number of seconds or None, got {type(ttl).__name__}")
    seconds = float(ttl)  # type: ignore[arg-type]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a positive number of seconds (or None for no expiry), got {ttl!r}")
    return seconds


def _check_delta(value: object) -> Number:
    if not _is_number(value):
        raise TypeError(f"the increment must be an int or a float, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"the increment must be a finite number, got {value!r}")
    return value  # type: ignore[return-value]


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _encode(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise TypeError(
            f"a Redis-backed DualCache stores values as JSON and cannot encode this {type(value).__name__} "
            f"({exc}): store ints, floats, str, bool, None, lists or dicts with str keys, or pass "
            "local_only=True to keep any Python object in this process's memory"
        ) from exc


def _decode(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # written by something other than this cache: hand back the text
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _import_redis() -> Any:
    try:
        import redis.asyncio as redis_asyncio
    except ImportError as exc:
        raise ImportError(
            "DualCache(redis_url=...) needs the redis package: install the extra with "
            "pip install 'asgi-llm-guard[redis]'"
        ) from exc
    return redis_asyncio


def _address_of(client: Any) -> str:
    try:
        kwargs = client.connection_pool.connection_kwargs
    except AttributeError:
        return "the configured address"
    if kwargs.get("path"):
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


class DualCache:
    """LiteLLM's ``DualCache`` API: a bounded in-memory LRU with TTLs, optionally backed by Redis.

    Usage::

        cache = DualCache(redis_url="redis://localhost:6379/0")  # or DualCache() for memory only
        count = await cache.async_increment_cache(f"rpm:{user}", 1, ttl=60)  # atomic across replicas
        await cache.aclose()

    Arguments (keyword-only):

    * ``max_size``: entries kept in memory; the least recently used is evicted beyond it.
    * ``default_ttl``: seconds for writes and new counters given no ``ttl`` (None: no expiry).
    * ``redis_url`` / ``redis``: a Redis URL (the cache builds and owns the client) or a ready
      ``redis.asyncio.Redis`` client (yours to close; its own timeouts and retries apply). Not both.
    * ``redis_failure``: while Redis is unreachable, ``"closed"`` raises :class:`CacheUnavailable` (503) and
      ``"local"`` serves each call from this process's memory (counters continue from the last value seen).
    * ``local_ttl``: seconds a value this process set is served from memory before asking Redis again
      (0 disables that read layer). Counters are always read from Redis.
    * ``namespace``: prefix of every Redis key.
    * ``redis_timeout``: connect and read timeout, in seconds, of a client built from ``redis_url``.
    * ``redis_max_connections``: connections to Redis at once (default 100; a ``max_connections`` in
      ``redis_url`` wins); calls beyond it wait for one. For a client passed as ``redis=``, the default is
      its pool's ``max_connections``.
    * ``redis_pool_timeout``: seconds a call waits for a free connection before it raises
      :class:`CacheBusy` (503).

    ``ttl`` is in seconds (floats allowed). A ``ttl`` given to an increment applies only when the key has no
    expiry yet (normally: when the counter is created), so a counter's window is fixed, not sliding. Every
    method accepts and ignores LiteLLM's extra keyword arguments (``parent_otel_span`` and the like), except
    ``local_only=True``, which keeps that call in this process's memory even when Redis is configured.
    """

    def __init__(
        self,
        *,
        max_size: int = 10_000,
        default_ttl: float | None = None,
        redis_url: str | None = None,
        redis: Any | None = None,
        redis_failure: RedisFailure = "closed",
        local_ttl: float = 1.0,
        namespace: str = "llm_guard:",
        redis_timeout: float = 1.0,
        redis_max_connections: int | None = None,
        redis_pool_timeout: float = 5.0,
        default_in_memory_ttl: float | None = None,
        default_redis_ttl: float | None = None,
    ) -> None:
        if not isinstance(max_size, int) or isinstance(max_size, bool):
            raise TypeError(
                f"max_size must be an int (entries kept in memory), got {type(max_size).__name__}"
            )
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1 (entries kept in memory), got {max_size}")
        self._default_ttl = _check_ttl(default_ttl, "default_ttl")
        if not isinstance(redis_failure, str):
            raise TypeError(f"redis_failure must be 'closed' or 'local', got {type(redis_failure).__name__}")
        if redis_failure not in ("closed", "local"):
            raise ValueError(
                f"redis_failure must be 'closed' (answer 503 while Redis is down) or 'local' "
                f"(serve from this process's memory), got {redis_failure!r}"
            )
        if not _is_number(local_ttl):
            raise TypeError(f"local_ttl must be a number of seconds, got {type(local_ttl).__name__}")
        if not math.isfinite(local_ttl) or local_ttl < 0:
            raise ValueError(
                f"local_ttl must be 0 (no local read layer) or a positive number, got {local_ttl!r}"
            )
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str prefix for Redis keys, got {type(namespace).__name__}")
        if not _is_number(redis_timeout):
            raise TypeError(f"redis_timeout must be a number of seconds, got {type(redis_timeout).__name__}")
        if not math.isfinite(redis_timeout) or redis_timeout <= 0:
            raise ValueError(f"redis_timeout must be a positive number of seconds, got {redis_timeout!r}")
        if redis_max_connections is not None:
            if not isinstance(redis_max_connections, int) or isinstance(redis_max_connections, bool):
                raise TypeError(
                    f"redis_max_connections must be an int, got {type(redis_max_connections).__name__}"
                )
            if redis_max_connections < 1:
                raise ValueError(f"redis_max_connections must be at least 1, got {redis_max_connections}")
        if not _is_number(redis_pool_timeout):
            raise TypeError(
                f"redis_pool_timeout must be a number of seconds, got {type(redis_pool_timeout).__name__}"
            )
        if not math.isfinite(redis_pool_timeout) or redis_pool_timeout <= 0:
            raise ValueError(f"redis_pool_timeout must be a positive number of seconds, got {redis_pool_timeout!r}")
        if redis_url is not None and redis is not None:
            raise ValueError(
                "pass either redis_url= (the cache builds its own client) or redis= (a client), not both"
            )
        if redis_url is not None and (not isinstance(redis_url, str) or not redis_url):
            raise TypeError("redis_url must be a non-empty str such as 'redis://localhost:6379/0'")

        # LiteLLM's names (its hooks build DualCache(default_in_memory_ttl=...)): without Redis the in-memory TTL is
        # the default TTL; with Redis it is how long a value is served from memory (local_ttl), and the Redis TTL
        # is the default TTL of writes.
        in_memory_ttl = _check_ttl(default_in_memory_ttl, "default_in_memory_ttl")
        redis_ttl = _check_ttl(default_redis_ttl, "default_redis_ttl")
        self.default_in_memory_ttl = in_memory_ttl
        self.default_redis_ttl = redis_ttl
        if redis_url is None and redis is None:
            if self._default_ttl is None:
                self._default_ttl = in_memory_ttl
        else:
            if in_memory_ttl is not None:
                local_ttl = in_memory_ttl
            if self._default_ttl is None:
                self._default_ttl = redis_ttl
        self._memory = _Memory(max_size)
        self._max_size = max_size
        self._redis_failure: RedisFailure = redis_failure
        self._local_ttl = float(local_ttl)
        self._namespace = namespace
        self._redis: Any = None
        self._owns_client = False
        self._closed = False
        self._redis_down = False
        self._pool_busy = False
        self._address = ""
        self._redis_errors: tuple[type[BaseException], ...] = ()
        self._busy_errors: tuple[type[BaseException], ...] = ()
        self._slots = _ConnectionSlots(1, 1.0)  # sized below when Redis is configured
        self._increment_script: Any = None
        self._in_flight: dict[str, _InFlight] = {}

        if redis_url is None and redis is None:
            return
        redis_asyncio = _import_redis()
        import redis.exceptions as redis_exceptions
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        if redis_url is not None:
            try:
                # A blocking pool: should anything else take the client's connections (redis_client), a call
                # waits for one instead of failing at once; the slots below keep this cache's own calls within it.
                pool = redis_asyncio.BlockingConnectionPool.from_url(
                    redis_url,
                    max_connections=redis_max_connections or 100,
                    timeout=float(redis_pool_timeout),
                    socket_connect_timeout=float(redis_timeout),
                    socket_timeout=float(redis_timeout),
                    # one immediate retry: it replaces a pooled connection that died with a restarted server
                    retry=Retry(NoBackoff(), 1),
                )
            except ValueError as exc:
                raise ValueError(
                    f"redis_url is not a valid Redis URL ({exc}): pass e.g. 'redis://localhost:6379/0'"
                ) from exc
            client = redis_asyncio.Redis.from_pool(pool)
            self._owns_client = True
        else:
            import redis as redis_sync

            if isinstance(redis, redis_sync.Redis):
                raise TypeError(
                    "redis= needs an asyncio client: pass redis.asyncio.Redis(...), not redis.Redis(...)"
                )
            missing = [
                m
                for m in ("get", "set", "mget", "delete", "register_script")
                if not callable(getattr(redis, m, None))
            ]
            if missing:
                raise TypeError(
                    f"redis= must be a redis.asyncio.Redis client, got {type(redis).__name__} "
                    f"(it has no {', '.join(missing)})"
                )
            client = redis
        self._redis = client
        self._address = _address_of(client)
        if redis_url is not None or redis_max_connections is not None:
            size = client.connection_pool.max_connections if redis_url is not None else redis_max_connections
        else:
            size = getattr(getattr(client, "connection_pool", None), "max_connections", None)
        self._slots = _ConnectionSlots(size if isinstance(size, int) and size > 0 else 100, float(redis_pool_timeout))
        self._redis_errors = (
            _PoolTimeout,
            redis_exceptions.ConnectionError,
            redis_exceptions.TimeoutError,
            OSError,
            asyncio.TimeoutError,
        )
        # A pool of the caller's client that ran out (redis-py >= 6 says so with its own error): busy, not down.
        max_connections_error = getattr(redis_exceptions, "MaxConnectionsError", None)
        self._busy_errors = (_PoolTimeout,) if max_connections_error is None else (_PoolTimeout, max_connections_error)
        self._increment_script = client.register_script(_INCREMENT_LUA)

    # -- properties ----------------------------------------------------------------------------------------

    @property
    def redis_client(self) -> Any:
        """The ``redis.asyncio`` client in use (for commands this API lacks), or ``None`` without Redis."""
        return self._redis

    @property
    def redis_cache(self) -> None:
        """LiteLLM's ``DualCache.redis_cache``, read by its hooks that run Lua scripts of their own (the
        max-iterations and per-session budget limiters): ``None`` without Redis, so they count in memory as on
        LiteLLM's in-memory cache. With Redis there is no LiteLLM ``RedisCache`` here, and counting in one
        process's memory would give each replica its own limit, so reading it raises (at the hook's
        construction) instead."""
        if self._redis is None:
            return None
        raise AttributeError(
            "asgi_llm_guard.DualCache has no LiteLLM RedisCache (redis_cache): a hook that runs its own Redis "
            "scripts needs LiteLLM's DualCache(redis_cache=RedisCache(...)), or this DualCache without Redis "
            "(see docs/litellm.md)"
        )

    @property
    def owns_connections(self) -> bool:
        """Whether this cache built its Redis client (from ``redis_url``), so ``aclose`` must close it.

        The middleware closes such a cache at lifespan shutdown; a client passed in as ``redis=`` is yours.
        """
        return self._owns_client

    @property
    def max_size(self) -> int:
        """The number of entries the in-memory layer keeps."""
        return self._max_size

    # -- async API -----------------------------------------------------------------------------------------

    async def async_get_cache(self, key: str, **kwargs: Any) -> Any:
        """The value stored under ``key``, or ``None`` when it is missing or expired."""
        _check_key(key)
        now = monotonic()
        if self._redis is None or kwargs.get("local_only"):
            return self._memory.get(key, now)
        entry = self._memory.entry(key, now)
        if entry is not None and entry.fresh_until > now:
            return entry.value
        self._check_open()
        try:
            async with self._slots:
                raw = await self._redis.get(self._namespace + key)
        except self._redis_errors as exc:
            self._redis_failed("async_get_cache", exc)
            return self._memory.get(key, monotonic())
        self._redis_ok()
        return None if raw is None else _decode(raw)

    async def async_set_cache(self, key: str, value: Any, ttl: float | None = None, **kwargs: Any) -> None:
        """Store ``value`` under ``key``, expiring after ``ttl`` seconds (default: ``default_ttl``)."""
        _check_key(key)
        seconds = self._ttl(ttl)
        if self._redis is None or kwargs.get("local_only"):
            self._memory.put(key, value, self._expiry(seconds, monotonic()))
            return
        payload = _encode(value)
        self._check_open()
        start = monotonic()
        try:
            async with self._slots:
                if seconds is None:
                    await self._redis.set(self._namespace + key, payload)
                else:
                    await self._redis.set(self._namespace + key, payload, px=_ms(seconds))
        except self._redis_errors as exc:
            self._redis_failed("async_set_cache", exc)
            self._memory.put(key, value, self._expiry(seconds, monotonic()))
            return
        self._redis_ok()
        self._memory.put(key, orjson.loads(payload), self._expiry(seconds, start), start + self._local_ttl)

    async def async_batch_set_cache(
        self, cache_list: Iterable[tuple[str, Any]], ttl: float | None = None, **kwargs: Any
    ) -> None:
        """Store each ``(key, value)`` pair of ``cache_list`` (one Redis round trip), all with one ``ttl``."""
        pairs = [(_check_key(k), v) for k, v in cache_list]
        seconds = self._ttl(ttl)
        if self._redis is None or kwargs.get("local_only"):
            now = monotonic()
            for key, value in pairs:
                self._memory.put(key, value, self._expiry(seconds, now))
            return
        if not pairs:
            return
        payloads = [_encode(value) for _, value in pairs]
        self._check_open()
        start = monotonic()
        try:
            async with self._slots, self._redis.pipeline(transaction=False) as pipe:
                for (key, _), payload in zip(pairs, payloads, strict=True):
                    pipe.set(self._namespace + key, payload, px=None if seconds is None else _ms(seconds))
                await pipe.execute()
        except self._redis_errors as exc:
            self._redis_failed("async_batch_set_cache", exc)
            now = monotonic()
            for key, value in pairs:
                self._memory.put(key, value, self._expiry(seconds, now))
            return
        self._redis_ok()
        for (key, _), payload in zip(pairs, payloads, strict=True):
            self._memory.put(
                key, orjson.loads(payload), self._expiry(seconds, start), start + self._local_ttl
            )

    async def async_increment_cache(
        self, key: str, value: Number, ttl: float | None = None, **kwargs: Any
    ) -> Number:
        """Add ``value`` to the number under ``key`` (a missing key counts as 0) and return the new value.

        Atomic: in memory no other task runs in between; with Redis it is one Lua script (one round trip).
        ``int`` increments of ``int`` values stay ``int``; anything involving a float is a float. ``ttl``
        (default: ``default_ttl``) is applied only when the key has no expiry yet, normally at creation.
        """
        _check_key(key)
        delta = _check_delta(value)
        seconds = self._ttl(ttl)
        if self._redis is None or kwargs.get("local_only"):
            return self._memory.increment(key, delta, seconds, monotonic())
        self._check_open()
        is_int = isinstance(delta, int)
        # Concurrent increments of one key travel on different connections, so their replies can arrive out
        # of Redis's order. While any are in flight, the in-memory copy only moves forward (up for positive
        # increments, down for negative ones) so it ends on the latest value.
        flight = self._in_flight.get(key)
        if flight is None:
            flight = self._in_flight[key] = _InFlight()
        flight.count += 1
        try:
            async with self._slots:
                reply = await self._increment_script(
                    keys=[self._namespace + key],
                    args=[delta, "1" if is_int else "0", 0 if seconds is None else _ms(seconds)],
                )
        except self._redis_errors as exc:
            self._redis_failed("async_increment_cache", exc)
            return self._memory.increment(key, delta, seconds, monotonic())
        else:
            self._redis_ok()
            raw, pttl = reply
            new: Number = raw if isinstance(raw, int) else float(raw)
            if flight.latest is None or (new > flight.latest if delta > 0 else new < flight.latest):
                flight.latest = new
                # kept for local_only reads and redis_failure="local"; never used to answer plain reads
                self._memory.put(key, new, monotonic() + pttl / 1000 if pttl >= 0 else None)
            return new
        finally:
            flight.count -= 1
            if flight.count == 0 and self._in_flight.get(key) is flight:
                del self._in_flight[key]

    async def async_delete_cache(self, key: str, **kwargs: Any) -> None:
        """Remove ``key`` (no error when it is missing)."""
        _check_key(key)
        self._memory.delete(key)
        if self._redis is None or kwargs.get("local_only"):
            return
        self._check_open()
        try:
            async with self._slots:
                await self._redis.delete(self._namespace + key)
        except self._redis_errors as exc:
            self._redis_failed("async_delete_cache", exc)
            return
        self._redis_ok()

    async def async_batch_get_cache(self, keys: Iterable[str | None], **kwargs: Any) -> list[Any]:
        """The values of ``keys``, in order, with ``None`` for each missing key (one Redis round trip). A ``None``
        in ``keys`` reads as a miss, as in LiteLLM (its limiter asks for the keys of identities it lacks)."""
        key_list = [k if k is None else _check_key(k) for k in keys]
        now = monotonic()
        if self._redis is None or kwargs.get("local_only"):
            return [None if k is None else self._memory.get(k, now) for k in key_list]
        results: list[Any] = [None] * len(key_list)
        remote: list[int] = []
        for i, key in enumerate(key_list):
            if key is None:
                continue
            entry = self._memory.entry(key, now)
            if entry is not None and entry.fresh_until > now:
                results[i] = entry.value
            else:
                remote.append(i)
        if not remote:
            return results
        self._check_open()
        try:
            async with self._slots:
                raws = await self._redis.mget([self._namespace + str(key_list[i]) for i in remote])
        except self._redis_errors as exc:
            self._redis_failed("async_batch_get_cache", exc)
            now = monotonic()
            for i in remote:
                results[i] = self._memory.get(str(key_list[i]), now)
            return results
        self._redis_ok()
        for i, raw in zip(remote, raws, strict=True):
            results[i] = None if raw is None else _decode(raw)
        return results

    async def async_set_cache_pipeline(
        self, cache_list: Iterable[tuple[str, Any]], ttl: float | None = None, **kwargs: Any
    ) -> None:
        """LiteLLM's name for :meth:`async_batch_set_cache`."""
        await self.async_batch_set_cache(cache_list, ttl, **kwargs)

    async def async_increment_cache_pipeline(
        self, increment_list: Iterable[Mapping[str, Any]], **kwargs: Any
    ) -> list[Number]:
        """LiteLLM's batch increment: each ``{"key", "increment_value", "ttl"}`` is one atomic
        :meth:`async_increment_cache`; returns the new values in order."""
        local_only = bool(kwargs.get("local_only"))
        return [
            await self.async_increment_cache(
                operation["key"], operation["increment_value"], operation.get("ttl"), local_only=local_only
            )
            for operation in increment_list
        ]

    async def async_set_cache_sadd(
        self, key: str, value: Iterable[Any], ttl: float | None = None, **kwargs: Any
    ) -> None:
        """Add the members of ``value`` to the set under ``key`` (LiteLLM's ``SADD``); read it with
        :meth:`async_get_set_members`. ``ttl`` (default: ``default_ttl``) is the set's expiry."""
        _check_key(key)
        members = list(value)
        seconds = self._ttl(ttl)
        if self._redis is None or kwargs.get("local_only"):
            now = monotonic()
            current = self._memory.get(key, now)
            merged = (set(current) if isinstance(current, (set, frozenset)) else set()) | set(members)
            self._memory.put(key, merged, self._expiry(seconds, now))
            return
        if not members:
            return
        self._check_open()
        try:
            async with self._slots, self._redis.pipeline(transaction=True) as pipe:
                pipe.sadd(self._namespace + key, *members)
                if seconds is not None:
                    pipe.pexpire(self._namespace + key, _ms(seconds))
                await pipe.execute()
        except self._redis_errors as exc:
            self._redis_failed("async_set_cache_sadd", exc)
            await self.async_set_cache_sadd(key, members, ttl, local_only=True)
            return
        self._redis_ok()

    async def async_get_set_members(self, key: str, **kwargs: Any) -> set[Any]:
        """The members of the set :meth:`async_set_cache_sadd` built under ``key`` (empty when missing)."""
        _check_key(key)
        if self._redis is None or kwargs.get("local_only"):
            current = self._memory.get(key, monotonic())
            return set(current) if isinstance(current, (set, frozenset)) else set()
        self._check_open()
        try:
            async with self._slots:
                raw = await self._redis.smembers(self._namespace + key)
        except self._redis_errors as exc:
            self._redis_failed("async_get_set_members", exc)
            return await self.async_get_set_members(key, local_only=True)
        self._redis_ok()
        return {m.decode() if isinstance(m, bytes) else m for m in raw}

    async def aclose(self) -> None:
        """Close the Redis client if this cache built it from ``redis_url`` (a client passed in is left open).

        Afterwards the calls that would use Redis raise ``RuntimeError``; memory-only calls keep working.
        """
        if self._closed:
            return
        self._closed = True
        if self._redis is not None and self._owns_client:
            await self._redis.aclose()

    async def __aenter__(self) -> DualCache:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- sync API (in-memory layer only) -------------------------------------------------------------------

    def get_cache(self, key: str, **kwargs: Any) -> Any:
        """The in-memory value under ``key``, or ``None`` (never asks Redis)."""
        return self._memory.get(_check_key(key), monotonic())

    def set_cache(self, key: str, value: Any, ttl: float | None = None, **kwargs: Any) -> None:
        """Store ``value`` in memory only, expiring after ``ttl`` seconds (default: ``default_ttl``)."""
        _check_key(key)
        self._memory.put(key, value, self._expiry(self._ttl(ttl), monotonic()))

    def increment_cache(self, key: str, value: Number, ttl: float | None = None, **kwargs: Any) -> Number:
        """Add ``value`` to the in-memory number under ``key`` (missing: 0) and return the new value."""
        _check_key(key)
        return self._memory.increment(key, _check_delta(value), self._ttl(ttl), monotonic())

    def delete_cache(self, key: str, **kwargs: Any) -> None:
        """Remove ``key`` from memory (not from Redis)."""
        self._memory.delete(_check_key(key))

    def batch_get_cache(self, keys: Iterable[str | None], **kwargs: Any) -> list[Any]:
        """The in-memory values of ``keys``, in order, ``None`` for misses (and for ``None`` keys)."""
        now = monotonic()
        return [None if k is None else self._memory.get(_check_key(k), now) for k in keys]

    # -- internals -----------------------------------------------------------------------------------------

    def _ttl(self, ttl: object) -> float | None:
        seconds = _check_ttl(ttl)
        return self._default_ttl if seconds is None else seconds

    @staticmethod
    def _expiry(seconds: float | None, now: float) -> float | None:
        return None if seconds is None else now + seconds

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this DualCache was closed with aclose(): build a new one to use Redis again")

    def _redis_failed(self, operation: str, exc: BaseException) -> None:
        if isinstance(exc, self._busy_errors) and not self._redis_down:
            # Redis answers, slower than the calls come: an overload (503 in both modes, see the module notes).
            # While an outage is on, the connections are busy timing out: the wait is part of the outage.
            if not self._pool_busy:
                self._pool_busy = True
                logger.warning(
                    "all %d connections to Redis at %s stayed in use for %gs (%s during %s); calls that wait "
                    "longer fail with 503: raise redis_max_connections or redis_pool_timeout if this persists",
                    self._slots.size,
                    self._address,
                    self._slots.timeout,
                    type(exc).__name__,
                    operation,
                )
            raise CacheBusy(
                self._address, connections=self._slots.size, waited=self._slots.timeout, operation=operation
            ) from exc
        if not self._redis_down:
            self._redis_down = True
            if self._redis_failure == "closed":
                consequence = "cache calls fail with 503 until it answers again"
            else:
                consequence = "serving cache calls from this process's memory until it answers again"
            logger.warning(
                "Redis at %s is unreachable (%s during %s); %s",
                self._address,
                type(exc).__name__,
                operation,
                consequence,
            )
        if self._redis_failure == "closed":
            raise CacheUnavailable(self._address, operation=operation) from exc

    def _redis_ok(self) -> None:
        if self._redis_down:
            self._redis_down = False
            logger.info("Redis at %s is reachable again; the cache uses it again", self._address)
        if self._pool_busy:
            self._pool_busy = False
            logger.info("connections to Redis at %s are free again", self._address)
