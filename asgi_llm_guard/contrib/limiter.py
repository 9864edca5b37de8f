"""``ParallelRequestLimiter``: max parallel requests, requests per minute and tokens per minute, per key, user,
team or end user, with the counters in the middleware's :class:`~asgi_llm_guard.cache.DualCache`.

With ``DualCache(redis_url=...)`` the counters live in Redis and every replica shares them, so a limit of 5 means
5 across the whole service. Where this differs from LiteLLM's ``_PROXY_MaxParallelRequestsHandler``, on purpose:

* **Admission is atomic.** LiteLLM reads the in-memory copy of a counter, compares, then increments: replicas
  (and concurrent requests in one process) all pass the check before any increment lands, so a limit of 5 lets
  5 × replicas through. Here a request first increments (one atomic Redis script) and is admitted only when the
  value it got back is within the limit; otherwise it takes its increment back and gets a 429.
* **Slots cannot leak.** The slot is released by ``async_post_call_complete_hook``, which the middleware calls
  once per request whatever the outcome: success, downstream error, a refusal by a later hook, a client that
  disconnects. Only what this request acquired is released (what it acquired is noted in
  ``user_api_key_dict.metadata``), and the increment itself runs shielded from cancellation, so a client leaving
  while Redis answers cannot leave an increment nobody releases. A crashed process's slots expire (``slot_ttl``).
* **Redis outages are explicit.** The cache's ``redis_failure`` decides: ``"closed"`` (default) answers 503 and
  acquires nothing; ``"local"`` limits per process until Redis answers again.

Parallel slots are counted in windows of ``slot_ttl`` seconds: a request increments the counter of the window it
starts in, and the admission check adds the neighbouring windows' counters, so requests that straddle a window
boundary still count and a counter's fixed expiry never drops a slot younger than ``slot_ttl``. A slot is forgotten
between ``slot_ttl`` and ``2 * slot_ttl`` seconds after it was taken; keep ``slot_ttl`` above your longest request.

The per-minute windows are fixed (wall-clock minutes), like LiteLLM's. Requests with no identity for ``per`` (no
API key for ``per="key"``, no ``user`` for ``per="end_user"``, ...) are not limited. The ``auth``
callable must hand out a fresh ``UserAPIKeyAuth`` per request (its ``metadata`` is request-scoped,
docs/reference.md#identity).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Literal, Protocol

from ..cache import DualCache
from ..errors import GuardError

__all__ = ["LimiterObserver", "ParallelRequestLimiter"]

logger = logging.getLogger("asgi_llm_guard.contrib")

Per = Literal["key", "user", "team", "end_user"]
_IDENTITY_FIELD = {"key": "api_key", "user": "user_id", "team": "team_id", "end_user": "end_user_id"}
_STATE = "_llm_guard_limiter"
# Seconds a window counter outlives its window, so replicas whose clocks differ a little still find it.
_MARGIN = 5.0


class LimiterObserver(Protocol):
    """What ``observer=`` must offer: ``limiter_rejected(limit)`` with ``limit`` ``"parallel"``, ``"rpm"`` or
    ``"tpm"`` (``asgi_llm_guard.contrib.prometheus.PrometheusObserver`` has it)."""

    def limiter_rejected(self, limit: str) -> None: ...


class _Held:
    """What one request acquired from one limiter (kept in ``user_api_key_dict.metadata``)."""

    __slots__ = ("cache", "base", "slot", "acquiring", "count_tokens", "tokens", "finished")

    def __init__(self, cache: DualCache, base: str, count_tokens: bool) -> None:
        self.cache = cache
        self.base = base
        self.slot: tuple[str, int] | None = None  # (counter key, window) of a held parallel slot
        self.acquiring: asyncio.Future[tuple[str, int] | None] | None = None
        self.count_tokens = count_tokens
        self.tokens = 0  # tokens of this request seen so far (usage may be cumulative across chunks)
        self.finished = False


def _limit(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{name} must be a non-negative int or None, not {value!r}")
    return value


def _usage_tokens(payload: Any) -> int | None:
    """``total_tokens`` of a response, a chat usage chunk or a Responses API ``response.completed`` event."""
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        response = payload.get("response")  # Responses API stream events carry the response object
        usage = response.get("usage") if isinstance(response, dict) else None
        if not isinstance(usage, dict):
            return None
    total = usage.get("total_tokens")
    if isinstance(total, bool) or not isinstance(total, (int, float)):
        return None
    return int(total)


def _to_next_minute(now: float) -> str:
    return str(max(1, math.ceil(60 - now % 60)))


class ParallelRequestLimiter:
    """Limit parallel requests, requests per minute and tokens per minute per key, user, team or end user::

        app.add_middleware(LLMHookMiddleware, hooks=[ParallelRequestLimiter(max_parallel_requests=5)],
                           cache=DualCache(redis_url="redis://localhost:6379/0"))

    Over a limit the client gets a 429 (``rate_limit_error``) with ``Retry-After``: 1 s for parallel requests,
    the seconds to the next minute for ``rpm_limit`` and ``tpm_limit``. ``UserAPIKeyAuth.max_parallel_requests``,
    ``rpm_limit`` and ``tpm_limit``, when an ``auth`` callable sets them, override these defaults per request.

    Tokens are ``usage.total_tokens`` of JSON responses, and of streamed chunks that carry usage (chat with
    ``stream_options.include_usage``, the Responses API's ``response.completed``); they are added to the
    minute's counter when the request ends, and a request is refused while its minute's count is at the limit.
    Counting tokens needs a per-chunk streaming hook, which makes the middleware parse every SSE stream, so it is
    on only when ``tpm_limit`` is set; pass ``count_tokens=True`` when only ``auth`` sets per-identity
    ``tpm_limit`` values. ``observer`` (e.g. a ``PrometheusObserver``) is told of each rejection and its limit.
    """

    def __init__(
        self,
        *,
        max_parallel_requests: int | None = None,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
        per: Per = "key",
        slot_ttl: float = 600,
        count_tokens: bool | None = None,
        observer: LimiterObserver | None = None,
        prefix: str = "limiter",
    ) -> None:
        self.max_parallel_requests = _limit(max_parallel_requests, "max_parallel_requests")
        self.rpm_limit = _limit(rpm_limit, "rpm_limit")
        self.tpm_limit = _limit(tpm_limit, "tpm_limit")
        if per not in _IDENTITY_FIELD:
            raise ValueError(f"per must be one of {', '.join(map(repr, _IDENTITY_FIELD))}, not {per!r}")
        if isinstance(slot_ttl, bool) or not isinstance(slot_ttl, (int, float)) or not slot_ttl > 0:
            raise TypeError(f"slot_ttl must be a positive number of seconds, not {slot_ttl!r}")
        if count_tokens is not None and not isinstance(count_tokens, bool):
            raise TypeError(
                f"count_tokens must be True, False or None (on when tpm_limit is set), not {count_tokens!r}"
            )
        if observer is not None and not callable(getattr(observer, "limiter_rejected", None)):
            raise TypeError(
                f"observer must have a limiter_rejected(limit) method, e.g. a PrometheusObserver, not {observer!r}"
            )
        if not isinstance(prefix, str) or not prefix:
            raise TypeError(f"prefix must be a non-empty str (the start of every counter key), not {prefix!r}")
        self.per: Per = per
        self.slot_ttl = float(slot_ttl)
        self.observer = observer
        self.prefix = prefix
        self._field = _IDENTITY_FIELD[per]
        self._state_key = f"{prefix}:{per}:{id(self):x}"  # two limiters on one request keep separate notes
        self.count_tokens = self.tpm_limit is not None if count_tokens is None else count_tokens
        if self.count_tokens:
            # Bound only when tokens are counted: the middleware binds the hook methods it finds (getattr), and a
            # streaming hook makes it parse every SSE stream (docs/reference.md#sse-parsing).
            self.async_post_call_success_hook = self._count_response_tokens
            self.async_post_call_streaming_hook = self._count_chunk_tokens

    # -- keys and introspection ---------------------------------------------------------------------------

    def counter_base(self, identity: str) -> str:
        """The prefix of this limiter's counter keys for one identity: ``limiter:key:<hashed key>``."""
        return f"{self.prefix}:{self.per}:{identity}"

    def identity_of(self, user_api_key_dict: Any) -> str | None:
        """The value of ``per`` for a request (the hashed key, the user id, ...), or ``None``."""
        value = getattr(user_api_key_dict, self._field, None)
        return value if isinstance(value, str) and value else None

    async def usage(self, cache: DualCache, identity: str) -> dict[str, int]:
        """Current counters for ``identity``: ``{"parallel": n, "rpm": n, "tpm": n}`` (this minute)::

            assert await limiter.usage(cache, hash_key("sk-1")) == {"parallel": 0, "rpm": 3, "tpm": 120}
        """
        now = time.time()
        base = self.counter_base(identity)
        window = int(now // self.slot_ttl)
        minute = int(now // 60)
        values = await cache.async_batch_get_cache(
            [*(f"{base}:parallel:{w}" for w in (window - 1, window, window + 1)),
             f"{base}:rpm:{minute}", f"{base}:tpm:{minute}"]
        )  # fmt: skip
        numbers = [int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0 for v in values]
        return {"parallel": max(0, sum(numbers[:3])), "rpm": numbers[3], "tpm": numbers[4]}

    # -- hooks --------------------------------------------------------------------------------------------

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: DualCache, data: Any, call_type: Any) -> None:
        identity = self.identity_of(user_api_key_dict)
        if identity is None:
            return None
        max_parallel = _override(user_api_key_dict, "max_parallel_requests", self.max_parallel_requests)
        rpm = _override(user_api_key_dict, "rpm_limit", self.rpm_limit)
        tpm = _override(user_api_key_dict, "tpm_limit", self.tpm_limit)
        count_tokens = self.count_tokens and tpm is not None
        if max_parallel is None and rpm is None and not count_tokens:
            return None
        base = self.counter_base(identity)
        now = time.time()
        minute = int(now // 60)
        if tpm is not None:
            used = await cache.async_get_cache(f"{base}:tpm:{minute}")
            if isinstance(used, (int, float)) and not isinstance(used, bool) and used >= tpm:
                self._rejected("tpm")
                raise GuardError(
                    429,
                    f"Rate limit exceeded: {tpm} tokens per minute used for this {self.per}; "
                    "try again in the next minute.",
                    headers={"Retry-After": _to_next_minute(now)},
                )
        held = _Held(cache, base, count_tokens)
        # Noted before anything is acquired: the complete hook releases exactly what this request holds.
        user_api_key_dict.metadata.setdefault(_STATE, {})[self._state_key] = held
        if max_parallel is not None:
            # Shielded: if the request is cancelled (client gone, hook timeout) while Redis answers, the increment
            # still completes and the complete hook learns its result and releases it.
            held.acquiring = asyncio.ensure_future(self._acquire(cache, base, max_parallel, now))
            held.slot = await asyncio.shield(held.acquiring)
            held.acquiring = None
            if held.slot is None:
                self._rejected("parallel")
                raise GuardError(
                    429,
                    f"Rate limit exceeded: {max_parallel} parallel requests already running for this {self.per}; "
                    "retry when one has finished.",
                    headers={"Retry-After": "1"},
                )
        if rpm is not None:
            count = await cache.async_increment_cache(f"{base}:rpm:{minute}", 1, ttl=60 - now % 60 + _MARGIN)
            if count > rpm:
                self._rejected("rpm")
                raise GuardError(
                    429,
                    f"Rate limit exceeded: {rpm} requests per minute for this {self.per}; "
                    "try again in the next minute.",
                    headers={"Retry-After": _to_next_minute(now)},
                )
        return None

    async def async_post_call_complete_hook(self, user_api_key_dict: Any) -> None:
        notes = getattr(user_api_key_dict, "metadata", None)
        held = notes.get(_STATE, {}).get(self._state_key) if isinstance(notes, dict) else None
        if not isinstance(held, _Held) or held.finished:
            return
        held.finished = True
        # Shielded, so a hook timeout cannot cut a release in half; the task ends within the cache's timeouts.
        await asyncio.shield(asyncio.ensure_future(self._finish(held)))

    async def _count_response_tokens(self, user_api_key_dict: Any, response: Any) -> None:
        self._note_tokens(user_api_key_dict, _usage_tokens(response))
        return None

    async def _count_chunk_tokens(self, user_api_key_dict: Any, response: Any) -> None:
        self._note_tokens(user_api_key_dict, _usage_tokens(response))
        return None

    # -- internals ----------------------------------------------------------------------------------------

    def _note_tokens(self, user_api_key_dict: Any, total: int | None) -> None:
        """Remember the request's token count; the complete hook adds it to the minute (no I/O on the response
        path). Usage reported more than once (cumulative usage in every chunk) counts once, at its latest."""
        if total is None:
            return
        notes = getattr(user_api_key_dict, "metadata", None)
        held = notes.get(_STATE, {}).get(self._state_key) if isinstance(notes, dict) else None
        if isinstance(held, _Held) and held.count_tokens and total > held.tokens:
            held.tokens = total

    def _rejected(self, limit: str) -> None:
        if self.observer is not None:
            self.observer.limiter_rejected(limit)

    def _window_ttl(self, window: int, now: float) -> float:
        return (window + 2) * self.slot_ttl - now + _MARGIN

    async def _acquire(self, cache: DualCache, base: str, limit: int, now: float) -> tuple[str, int] | None:
        """Take a slot: the held ``(key, window)``, or ``None`` (over the limit, increment taken back)."""
        window = int(now // self.slot_ttl)
        key = f"{base}:parallel:{window}"
        ttl = self._window_ttl(window, now)
        count = await cache.async_increment_cache(key, 1, ttl=ttl)
        try:
            if count <= limit:
                # Slots taken in the neighbouring windows (just before the boundary, or by a replica whose clock
                # is ahead) still run. Read after our increment, so of two racing requests one sees the other.
                neighbours = await cache.async_batch_get_cache(
                    [f"{base}:parallel:{window - 1}", f"{base}:parallel:{window + 1}"]
                )
                count += sum(
                    int(v) for v in neighbours if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                )
        except BaseException:
            await self._decrement(cache, key, window)
            raise
        if count <= limit:
            return key, window
        await self._decrement(cache, key, window)
        return None

    async def _decrement(self, cache: DualCache, key: str, window: int) -> None:
        now = time.time()
        if now >= (window + 2) * self.slot_ttl:
            return  # the window's counter has expired (or is about to): nothing left to take back
        try:
            await cache.async_increment_cache(key, -1, ttl=self._window_ttl(window, now))
        except Exception as exc:
            logger.warning(
                "ParallelRequestLimiter could not release a slot (%s); it frees itself within %gs (slot_ttl)",
                type(exc).__name__,
                2 * self.slot_ttl,
            )

    async def _finish(self, held: _Held) -> None:
        acquiring, held.acquiring = held.acquiring, None
        if acquiring is not None:  # the request was cancelled while its slot was being taken
            try:
                held.slot = await acquiring
            except Exception:
                held.slot = None  # nothing was acquired
        slot, held.slot = held.slot, None
        if slot is not None:
            await self._decrement(held.cache, *slot)
        if held.count_tokens and held.tokens > 0:
            now = time.time()
            try:
                await held.cache.async_increment_cache(
                    f"{held.base}:tpm:{int(now // 60)}", held.tokens, ttl=60 - now % 60 + _MARGIN
                )
            except Exception as exc:
                logger.warning(
                    "ParallelRequestLimiter could not count %d tokens (%s)", held.tokens, type(exc).__name__
                )


def _override(user_api_key_dict: Any, field: str, default: int | None) -> int | None:
    value = getattr(user_api_key_dict, field, None)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return default
