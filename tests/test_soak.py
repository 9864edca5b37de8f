"""Soak: many in-process requests across every path (pass-through, guarded, refused, rejected, broken hook, bad
body, client gone, streamed through per-chunk and iterator hooks, moderated and blocked by moderation, an app
held at the moderation hold limit, audio forms); after a warm-up, traced memory and the number of asyncio tasks
stay flat.

The default run does a short version (3,000 requests). The full run is 100,000 requests::

    LLM_GUARD_SOAK=100000 .venv/bin/python -m pytest tests/test_soak.py -m soak     # or LLM_GUARD_SOAK=full

Requests are direct ASGI calls (no HTTP client), ``BATCH`` at a time, so the run measures the middleware.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from fastapi import HTTPException

from asgi_llm_guard import LLMHookMiddleware, RejectRequest


def soak_count() -> int:
    value = os.environ.get("LLM_GUARD_SOAK", "").strip().lower()
    if not value:
        return 3_000
    if value == "full":
        return 100_000
    return int(value.replace("_", ""))


COUNT = soak_count()
BATCH = 50
MAX_GROWTH = 1024 * 1024  # bytes of traced memory allowed between the midpoint and the end


# -- the app and hooks (they keep nothing per request) -----------------------------------------------------------

ANSWER = orjson.dumps({"id": "c", "object": "chat.completion", "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}}]})
CHUNK = b"data: " + orjson.dumps({"id": "c", "object": "chat.completion.chunk", "model": "m",
                                  "choices": [{"index": 0, "delta": {"content": "w"}}]}) + b"\n\n"
BULK = b"x" * (64 * 1024)  # 20 of them: past the 1 MiB a moderated response may hold before the app waits


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    data: dict[str, Any] = {}
    if scope["method"] == "POST":
        raw = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body", False):
                break
        data = orjson.loads(raw) if raw.startswith(b"{") else {}
    if data.get("bulk"):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        for _ in range(19):
            await send({"type": "http.response.body", "body": BULK, "more_body": True})
        await send({"type": "http.response.body", "body": BULK, "more_body": False})
        return
    if data.get("stream"):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for _ in range(4):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})


class Hooks:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        content = str(data.get("messages"))
        if "refuse me" in content:
            return "I can't help with that."
        if "rate limit me" in content:
            raise HTTPException(429, detail="slow down", headers={"retry-after": "1"})
        if "break the hook" in content:
            raise ValueError("a hook bug")
        await cache.async_increment_cache("requests", 1)
        user_api_key_dict.metadata["seen"] = True
        return {**data, "rewritten": True}

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        return {**response, "checked": True}

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        response["checked"] = True
        return None

    async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                           user_api_key_dict: Any) -> None:
        return None


class Window:
    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: AsyncIterator[dict], request_data: dict
    ) -> AsyncIterator[dict]:
        held: list[dict] = []
        async for chunk in response:
            held.append(chunk)
            if len(held) == 2:
                for item in held:
                    yield item
                held = []
        for item in held:
            yield item


class Moderation:
    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        await asyncio.sleep(0)
        if "moderate me out" in str(data.get("messages")):
            raise RejectRequest("blocked by moderation")


guarded = LLMHookMiddleware(app, hooks=[Hooks()])
streaming_window = LLMHookMiddleware(app, hooks=[Hooks(), Window()])
moderated = LLMHookMiddleware(app, hooks=[Hooks(), Moderation()])
moderated_first = LLMHookMiddleware(app, hooks=[Moderation()], moderation="before")
moderated_only = LLMHookMiddleware(app, hooks=[Moderation()])  # no hook reads the (binary) response


def chat(content: str, **extra: Any) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}], **extra})


def form(fields: int) -> bytes:
    part = b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n'
    audio = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + b"\0" * 2048 + b"\r\n"
    return b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nw\r\n' + audio + part * fields + b"--b--\r\n"


# (name, middleware, method, path, body, expected status, client leaves before the body is complete)
KINDS: list[tuple[str, Any, str, str, bytes, int, bool]] = [
    ("pass-through GET", guarded, "GET", "/v1/models", b"", 200, False),
    ("pass-through POST", guarded, "POST", "/v1/files", b"{}", 200, False),
    ("guarded", guarded, "POST", "/v1/chat/completions", chat("hello"), 200, False),
    ("refused", guarded, "POST", "/v1/chat/completions", chat("refuse me"), 200, False),
    ("refused stream", guarded, "POST", "/v1/chat/completions", chat("refuse me", stream=True), 200, False),
    ("rate limited", guarded, "POST", "/v1/chat/completions", chat("rate limit me"), 429, False),
    ("broken hook", guarded, "POST", "/v1/chat/completions", chat("break the hook"), 500, False),
    ("bad body", guarded, "POST", "/v1/chat/completions", b'{"model": ', 400, False),
    ("client gone", guarded, "POST", "/v1/chat/completions", chat("hello"), 0, True),
    ("streamed", guarded, "POST", "/v1/chat/completions", chat("hello", stream=True), 200, False),
    ("streamed window", streaming_window, "POST", "/v1/chat/completions", chat("hello", stream=True), 200, False),
    ("moderated", moderated, "POST", "/v1/chat/completions", chat("hello"), 200, False),
    ("moderated stream", moderated, "POST", "/v1/chat/completions", chat("hello", stream=True), 200, False),
    ("moderated out", moderated, "POST", "/v1/chat/completions", chat("moderate me out"), 200, False),
    ("moderated first", moderated_first, "POST", "/v1/embeddings", b'{"model": "m", "input": "x"}', 200, False),
    ("moderated bulk", moderated_only, "POST", "/v1/chat/completions", chat("hello", bulk=True), 200, False),
    ("moderated bulk out", moderated_only, "POST", "/v1/chat/completions", chat("moderate me out", bulk=True), 200,
     False),
    ("audio form", guarded, "POST", "/v1/audio/transcriptions", form(20), 200, False),
]


async def one(kind: tuple[str, Any, str, str, bytes, int, bool], statuses: Counter[tuple[str, int]]) -> None:
    name, middleware, method, path, body, expected, leaves = kind
    if leaves:
        messages = [{"type": "http.request", "body": body[:5], "more_body": True}, {"type": "http.disconnect"}]
    else:
        messages = [{"type": "http.request", "body": body, "more_body": False}]
    waiting: asyncio.Future[Any] | None = None
    status = 0
    ended = False

    async def receive() -> dict[str, Any]:
        nonlocal waiting
        if messages:
            return messages.pop(0)
        waiting = asyncio.get_running_loop().create_future()
        return await waiting  # the client stays until the response ends (cancelled then)

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, ended
        assert not ended, f"{name}: a message after the end"
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body", False):
            ended = True

    content_type = b"multipart/form-data; boundary=b" if path.startswith("/v1/audio") else b"application/json"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"content-type", content_type), (b"authorization", b"Bearer sk-soak")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}
    await middleware(scope, receive, send)
    assert ended or leaves, f"{name}: the response did not end"
    statuses[(name, status)] += 1
    assert status == expected, f"{name}: {status}, expected {expected}"


async def run(requests: int, start: int, statuses: Counter[tuple[str, int]]) -> None:
    for offset in range(0, requests, BATCH):
        size = min(BATCH, requests - offset)
        await asyncio.gather(*(one(KINDS[(start + offset + i) % len(KINDS)], statuses) for i in range(size)))


def measure() -> tuple[int, int]:
    gc.collect()
    return tracemalloc.get_traced_memory()[0], len(asyncio.all_tasks())


def quiet_package_logs() -> Callable[[], None]:
    """Keep the package's error logs (broken hook) out of pytest's capture, which would keep every record."""
    package = logging.getLogger("asgi_llm_guard")
    handler = logging.NullHandler()
    propagate = package.propagate
    package.addHandler(handler)
    package.propagate = False

    def restore() -> None:
        package.removeHandler(handler)
        package.propagate = propagate

    return restore


@pytest.mark.soak
@pytest.mark.timeout(max(120, COUNT // 40))
async def test_soak_memory_and_tasks_stay_flat() -> None:
    statuses: Counter[tuple[str, int]] = Counter()
    restore = quiet_package_logs()
    tracemalloc.start()
    try:
        tasks_before = len(asyncio.all_tasks())
        warm_up = min(max(len(KINDS) * BATCH, COUNT // 5), COUNT // 2)
        await run(warm_up, 0, statuses)
        half = (COUNT - warm_up) // 2
        await run(half, warm_up, statuses)
        memory_mid, tasks_mid = measure()
        await run(COUNT - warm_up - half, warm_up + half, statuses)
        memory_end, tasks_end = measure()
    finally:
        tracemalloc.stop()
        restore()
    assert sum(statuses.values()) == COUNT
    assert {name for name, _ in statuses} == {kind[0] for kind in KINDS}
    assert tasks_mid == tasks_end == tasks_before, (tasks_before, tasks_mid, tasks_end)
    growth = memory_end - memory_mid
    assert growth < MAX_GROWTH, f"traced memory grew by {growth} bytes over {COUNT - warm_up - half} requests"
