"""One replica of a guarded service, for tests/integration/test_replicas.py: run it with
``python -m uvicorn tests.replica_app:app --port N`` (from the repository root), several at once on one Redis.

Environment: ``REDIS_URL`` (required), ``REDIS_FAILURE`` (``closed`` or ``local``, default ``closed``),
``LLM_GUARD_NAMESPACE`` (Redis key prefix, default ``llm_guard:``), ``MAX_PARALLEL`` (default 5) and
``DOWNSTREAM_DELAY`` (seconds the model takes, default 0.5; a request header ``x-delay`` overrides it).

The downstream answers a chat completion after the delay, or, for ``"stream": true``, streams one chunk every
50 ms for the delay. ``GET /health`` answers 200 without touching the guard. A request with the header
``x-gate: 1`` instead waits (at most 60 s) until ``POST /open-gate`` (not a guarded route), so a test can hold
any number of requests in flight at once.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson

from asgi_llm_guard import DualCache, LLMHookMiddleware
from asgi_llm_guard.contrib.limiter import ParallelRequestLimiter
from tests.apps import read_request

gate = asyncio.Event()


async def downstream(scope: Any, receive: Any, send: Any) -> None:
    body = await read_request(scope, receive, send)
    if body is None:
        return
    headers = dict(scope["headers"])
    if scope["path"] == "/open-gate":
        gate.set()
    elif headers.get(b"x-gate") == b"1":
        await asyncio.wait_for(gate.wait(), 60)
    delay = float(headers.get(b"x-delay", os.environ.get("DOWNSTREAM_DELAY", "0.5")))
    data = orjson.loads(body) if body else {}
    if data.get("stream"):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        elapsed = 0.0
        while elapsed < delay:
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "x"}}]}
            event = b"data: " + orjson.dumps(chunk) + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await asyncio.sleep(0.05)
            elapsed += 0.05
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        return
    if scope["method"] == "POST":
        await asyncio.sleep(delay)
    answer = orjson.dumps(
        {"object": "chat.completion", "choices": [], "usage": {"total_tokens": 1}, "pid": os.getpid()}
    )
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": answer})


cache = DualCache(
    redis_url=os.environ["REDIS_URL"],
    redis_failure="local" if os.environ.get("REDIS_FAILURE") == "local" else "closed",
    namespace=os.environ.get("LLM_GUARD_NAMESPACE", "llm_guard:"),
)
limiter = ParallelRequestLimiter(max_parallel_requests=int(os.environ.get("MAX_PARALLEL", "5")), per="key")
app = LLMHookMiddleware(downstream, hooks=[limiter], cache=cache)
