"""LiteLLM's parallel request limiter (v1, ``proxy/hooks/parallel_request_limiter.py``), unchanged, on
``InternalUsageCache(asgi_llm_guard.DualCache(...))``, through uvicorn and the ``openai`` SDK.

What the proxy does with it: ``async_pre_call_hook`` counts the key's requests in flight and in this minute and
raises a 429 (``retry-after`` = seconds to the next minute) over ``max_parallel_requests`` / ``rpm_limit``;
``async_log_success_event`` and ``async_log_failure_event`` give the slot back as the request ends, whatever the
outcome (the failure event keeps the slot of a request the limiter itself refused); a client that leaves ends
the request as a failure. The minute comes from the limiter's ``clock``, fixed here so no test straddles two.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx
import openai
import pytest

from asgi_llm_guard import DualCache, LLMHookMiddleware, UserAPIKeyAuth
from tests.apps import Downstream
from tests.litellm_support import load_litellm, sdk
from tests.redis_server import RedisServer
from tests.servers import serve


def limiter(cache: DualCache) -> Any:
    load_litellm()
    from litellm.proxy.hooks.parallel_request_limiter import _PROXY_MaxParallelRequestsHandler
    from litellm.proxy.utils import InternalUsageCache

    return _PROXY_MaxParallelRequestsHandler(InternalUsageCache(cache), clock=lambda: datetime(2026, 12, 3, 10, 0, 30))


def key_auth(**limits: Any) -> Any:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        return UserAPIKeyAuth(api_key="key-hash-1", user_id="u-1", **limits)

    return auth


HI = [{"role": "user", "content": "hi"}]


async def test_rpm_limit_is_a_429_with_retry_after() -> None:
    app = LLMHookMiddleware(Downstream(), hooks=[limiter(DualCache())], auth=key_auth(rpm_limit=2))
    async with sdk(app) as client:
        for _ in range(2):
            await client.chat.completions.create(model="gpt-test", messages=HI)
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model="gpt-test", messages=HI)
    assert raised.value.status_code == 429
    assert raised.value.response.headers["retry-after"] == "30.0"
    assert "Crossed TPM / RPM / Max Parallel Request Limit" in raised.value.message


async def test_a_parallel_slot_is_released_after_success() -> None:
    down = Downstream(delay=0.1)
    app = LLMHookMiddleware(down, hooks=[limiter(DualCache())], auth=key_auth(max_parallel_requests=1))
    async with sdk(app) as client:
        slow = asyncio.create_task(client.chat.completions.create(model="gpt-test", messages=HI, stream=True))
        await asyncio.sleep(0.05)  # the first holds the only slot
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="gpt-test", messages=HI)
        stream = await slow
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == (
            "Hello from the model"
        )
        await asyncio.sleep(0.05)
        for _ in range(3):  # released each time
            answer = await client.chat.completions.create(model="gpt-test", messages=HI)
            assert answer.choices[0].message.content == "Hello from the model"


async def test_a_parallel_slot_is_released_after_a_failure() -> None:
    down = Downstream(status=500)
    app = LLMHookMiddleware(down, hooks=[limiter(DualCache())], auth=key_auth(max_parallel_requests=1))
    async with sdk(app) as client:
        for _ in range(3):
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(model="gpt-test", messages=HI)
    assert len(down.received) == 3  # never refused: each failure gave its slot back


async def test_a_parallel_slot_is_released_when_the_client_leaves() -> None:
    down = Downstream(delay=0.2, words=tuple(f" w{i}" for i in range(20)))
    app = LLMHookMiddleware(down, hooks=[limiter(DualCache())], auth=key_auth(max_parallel_requests=1))
    async with serve(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as http:
            body = {"model": "gpt-test", "messages": HI, "stream": True}
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_bytes():
                    break  # the first chunk...
                busy = await http.post("/v1/chat/completions", json={"model": "gpt-test", "messages": HI})
            # ...then leave
            for _ in range(50):  # the disconnect is seen within a few tens of milliseconds
                await asyncio.sleep(0.05)
                again = await http.post("/v1/chat/completions", json={"model": "gpt-test", "messages": HI})
                if again.status_code == 200:
                    break
    assert busy.status_code == 429
    assert again.status_code == 200


async def test_a_refused_request_keeps_no_slot() -> None:
    # The failure event of the limiter's own 429 releases nothing (the request never got a slot).
    app = LLMHookMiddleware(Downstream(delay=0.1), hooks=[limiter(DualCache())], auth=key_auth(max_parallel_requests=1))
    async with sdk(app) as client:
        slow = asyncio.create_task(client.chat.completions.create(model="gpt-test", messages=HI, stream=True))
        await asyncio.sleep(0.05)
        for _ in range(3):
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model="gpt-test", messages=HI)
        stream = await slow
        async for _ in stream:
            pass


async def test_limits_are_shared_by_replicas_through_redis() -> None:
    with RedisServer() as redis_server:
        # Read from Redis every time (local_ttl=0): the limiter reads, changes and writes its counters, so a
        # replica serving a counter from memory would count from a stale value (LiteLLM's own DualCache too).
        caches = [DualCache(redis_url=redis_server.url, namespace="lim:", local_ttl=0) for _ in range(2)]
        try:
            apps = [
                LLMHookMiddleware(Downstream(), hooks=[limiter(cache)], auth=key_auth(rpm_limit=3)) for cache in caches
            ]
            async with sdk(apps[0]) as first, sdk(apps[1]) as second:
                await first.chat.completions.create(model="gpt-test", messages=HI)
                await asyncio.sleep(0.05)  # the limiter writes Redis in a task of its own
                await second.chat.completions.create(model="gpt-test", messages=HI)
                await asyncio.sleep(0.05)
                await first.chat.completions.create(model="gpt-test", messages=HI)
                await asyncio.sleep(0.05)
                with pytest.raises(openai.RateLimitError):
                    await second.chat.completions.create(model="gpt-test", messages=HI)
        finally:
            for cache in caches:
                await cache.aclose()
