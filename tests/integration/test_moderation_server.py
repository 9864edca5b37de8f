"""Moderation's hold over a real server (uvicorn and hypercorn): an app sending tens of megabytes during a slow
moderation waits at the hold limit, then the client reads every byte in order."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import httpx
import pytest

from asgi_llm_guard import LLMHookMiddleware
from tests.servers import SERVERS

CHUNK = 64 * 1024
CHUNKS = 800  # 50 MiB


def numbered_chunk(index: int) -> bytes:
    return index.to_bytes(4, "big") * (CHUNK // 4)


class Bulk:
    def __init__(self) -> None:
        self.sent_bytes = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body", False):
            pass
        headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(CHUNK * CHUNKS).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index in range(CHUNKS):
            await send({"type": "http.response.body", "body": numbered_chunk(index), "more_body": index < CHUNKS - 1})
            self.sent_bytes += CHUNK


class SlowModeration:
    def __init__(self, app: Bulk) -> None:
        self.app = app
        self.app_sent_by_verdict = -1

    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        await asyncio.sleep(0.5)
        self.app_sent_by_verdict = self.app.sent_bytes


@pytest.mark.parametrize("server", sorted(SERVERS))
async def test_a_50_mib_answer_during_a_slow_moderation_is_held_to_1_mib_and_arrives_whole(server: str) -> None:
    app = Bulk()
    moderation = SlowModeration(app)
    expected = hashlib.sha256()
    for index in range(CHUNKS):
        expected.update(numbered_chunk(index))
    async with SERVERS[server](LLMHookMiddleware(app, hooks=[moderation])) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:
            body = {"model": "m", "input": "x"}
            async with client.stream("POST", "/v1/embeddings", json=body) as response:
                assert response.status_code == 200
                received = hashlib.sha256()
                size = 0
                async for piece in response.aiter_raw():
                    received.update(piece)
                    size += len(piece)
    assert moderation.app_sent_by_verdict <= 1024 * 1024
    assert size == CHUNK * CHUNKS
    assert received.hexdigest() == expected.hexdigest()  # every byte, in order
