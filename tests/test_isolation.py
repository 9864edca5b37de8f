"""Isolation under concurrency: 1,000 requests at once, each with its own content, key and user, through hooks that
rewrite requests, answers and stream chunks (and moderation raced against the app for some). Every downstream
call must see only its own request and every client only its own answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from typing import Any

import httpx
import orjson
from fastapi import HTTPException

from asgi_llm_guard import LLMHookMiddleware
from asgi_llm_guard.sse import SSEParser

from .apps import client

COUNT = 1000
PROMPT = re.compile(r"^prompt (\d+) [0-9a-f]{16}$")


def request_id(data: dict[str, Any]) -> int:
    match = PROMPT.match(data["messages"][0]["content"])
    assert match is not None, data
    return int(match.group(1))


async def jitter() -> None:
    """Give other requests a chance to run in between, in a random order."""
    for _ in range(random.randint(0, 3)):
        await asyncio.sleep(0)


class Rewrite:
    """Pre-call: tags the request with its id (from its own content); success and per-chunk: echo the id the
    request's own identity carries; moderation: checks it sees its own request."""

    def __init__(self) -> None:
        self.moderated: list[int] = []

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        rid = request_id(data)
        await jitter()
        assert user_api_key_dict.api_key == hashlib.sha256(f"sk-key-{rid}".encode()).hexdigest()
        assert user_api_key_dict.end_user_id == f"user-{rid}"
        assert user_api_key_dict.metadata == {}  # nobody else's notes
        user_api_key_dict.metadata["rid"] = rid
        await cache.async_set_cache(f"rid-{rid}", rid)
        return {**data, "request_id": rid, "model": f"model-{rid}"}

    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        await jitter()
        assert data["request_id"] == request_id(data) == user_api_key_dict.metadata["rid"]
        self.moderated.append(data["request_id"])

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        await jitter()
        rid = user_api_key_dict.metadata["rid"]
        assert data["request_id"] == rid == request_id(data)
        return {**response, "echo": rid}

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        await jitter()
        response["echo"] = user_api_key_dict.metadata["rid"]
        return response


class EchoApp:
    """Answers each chat request with its own prompt (streamed when asked, word by word) and records what it got."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body", False):
                break
        data = orjson.loads(raw)
        guard_state = scope["state"]["llm_guard"]
        self.calls.append({"data": data, "state": guard_state.data, "key": guard_state.user_api_key_dict.api_key,
                           "auth": dict(scope["headers"]).get(b"authorization")})
        await jitter()
        content = data["messages"][0]["content"]
        if data.get("stream"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for word in content.split(" "):
                chunk = {"object": "chat.completion.chunk", "model": data["model"], "request_id": data["request_id"],
                         "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                            "more_body": True})
                await jitter()
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return
        answer = orjson.dumps({"object": "chat.completion", "model": data["model"], "request_id": data["request_id"],
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})


class _NoModeration:
    """``hook`` without its moderation method (the same object does the rest)."""

    def __init__(self, hook: Rewrite) -> None:
        self.async_pre_call_hook = hook.async_pre_call_hook
        self.async_post_call_success_hook = hook.async_post_call_success_hook
        self.async_post_call_streaming_hook = hook.async_post_call_streaming_hook


async def test_a_thousand_concurrent_requests_stay_isolated() -> None:
    down = EchoApp()
    hooks = Rewrite()
    streamed = {rid for rid in range(COUNT) if rid % 3 == 0}
    prompts = {rid: f"prompt {rid} {random.getrandbits(64):016x}" for rid in range(COUNT)}
    plain = LLMHookMiddleware(down, hooks=[_NoModeration(hooks)])
    moderated = LLMHookMiddleware(down, hooks=[hooks], cache=plain.cache)  # same hooks, moderation raced

    class Split:
        """Half the traffic through a middleware without moderation, half with (same hook object)."""

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            rid = int(dict(scope.get("headers", [])).get(b"x-rid", b"0"))
            await (moderated if rid % 2 else plain)(scope, receive, send)

    async def one(c: httpx.AsyncClient, rid: int) -> tuple[int, httpx.Response]:
        await jitter()
        body = {"model": "m", "messages": [{"role": "user", "content": prompts[rid]}], "user": f"user-{rid}",
                "stream": rid in streamed}
        response = await c.post("/v1/chat/completions", json=body,
                                headers={"authorization": f"Bearer sk-key-{rid}", "x-rid": str(rid)})
        return rid, response

    async with client(Split()) as c:
        results = await asyncio.gather(*(one(c, rid) for rid in range(COUNT)))

    assert len(results) == COUNT
    for rid, response in results:
        assert response.status_code == 200, (rid, response.text)
        if rid in streamed:
            chunks = [orjson.loads(e.data) for e in SSEParser().feed(response.content) if e.data and not e.is_done]
            assert {c["echo"] for c in chunks} == {rid}
            assert {c["request_id"] for c in chunks} == {rid}
            assert {c["model"] for c in chunks} == {f"model-{rid}"}
            assert " ".join(c["choices"][0]["delta"]["content"] for c in chunks) == prompts[rid]
        else:
            answer = response.json()
            assert answer["echo"] == answer["request_id"] == rid
            assert answer["model"] == f"model-{rid}"
            assert answer["choices"][0]["message"]["content"] == prompts[rid]

    assert sorted(request_id(call["data"]) for call in down.calls) == list(range(COUNT))
    for call in down.calls:
        rid = request_id(call["data"])
        assert call["data"]["request_id"] == rid and call["data"]["model"] == f"model-{rid}"
        assert call["state"] == call["data"]
        assert call["key"] == hashlib.sha256(f"sk-key-{rid}".encode()).hexdigest()
        assert call["auth"] == f"Bearer sk-key-{rid}".encode()
    assert sorted(hooks.moderated) == [rid for rid in range(COUNT) if rid % 2]
    assert await plain.cache.async_batch_get_cache([f"rid-{rid}" for rid in range(COUNT)]) == list(range(COUNT))


class Mixed:
    """Refuses, rejects or passes each request depending on its id; the failure hook checks it sees its own."""

    def __init__(self) -> None:
        self.failures: list[tuple[int, int]] = []

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        rid = request_id(data)
        user_api_key_dict.metadata["rid"] = rid
        await jitter()
        if rid % 3 == 1:
            return f"refused {rid}"
        if rid % 3 == 2:
            raise HTTPException(429, detail=f"limit {rid}", headers={"retry-after": str(rid)})
        return {**data, "request_id": rid}

    async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                           user_api_key_dict: Any) -> None:
        await jitter()
        rid = user_api_key_dict.metadata["rid"]
        assert request_id(request_data) == rid
        self.failures.append((rid, getattr(original_exception, "status_code", 0)))


async def test_concurrent_refusals_and_errors_reach_only_their_own_client() -> None:
    down = EchoApp()
    hooks = Mixed()
    app = LLMHookMiddleware(down, hooks=[hooks])
    prompts = {rid: f"prompt {rid} {random.getrandbits(64):016x}" for rid in range(300)}

    async def one(c: httpx.AsyncClient, rid: int) -> tuple[int, httpx.Response]:
        await jitter()
        body = {"model": "m", "messages": [{"role": "user", "content": prompts[rid]}], "stream": rid % 2 == 0}
        return rid, await c.post("/v1/chat/completions", json=body)

    async with client(app) as c:
        results = await asyncio.gather(*(one(c, rid) for rid in range(300)))
    for rid, response in results:
        if rid % 3 == 1:
            assert response.status_code == 200
            assert f"refused {rid}".encode() in response.content
            assert response.content.count(b"refused ") == 1
        elif rid % 3 == 2:
            assert response.status_code == 429
            assert response.json()["error"]["message"] == f"limit {rid}"
            assert response.headers["retry-after"] == str(rid)
        else:
            assert response.status_code == 200
            assert prompts[rid].split(" ")[-1].encode() in response.content
    assert sorted(request_id(call["data"]) for call in down.calls) == [rid for rid in range(300) if rid % 3 == 0]
    # refusals (no status) and errors each reach the failure hook once, with their own request
    assert sorted(hooks.failures) == [(rid, 429 if rid % 3 == 2 else 0) for rid in range(300) if rid % 3]
