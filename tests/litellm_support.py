"""LiteLLM for the tests that run its own hook classes: imported once per session (it takes seconds), with its
model-cost map read from the package instead of the network."""

from __future__ import annotations

import os
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai

from tests.servers import serve


def load_litellm() -> Any:
    """``import litellm`` (once: Python caches it), quietly and offline."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import litellm
        import litellm.proxy._types  # noqa: F401  (the proxy's types: UserAPIKeyAuth, ...)
        import litellm.proxy.utils  # noqa: F401  (InternalUsageCache)
    return litellm


@asynccontextmanager
async def sdk(app: Any, api_key: str = "sk-test") -> AsyncIterator[openai.AsyncOpenAI]:
    """The official SDK against ``app`` served by uvicorn on 127.0.0.1."""
    async with serve(app) as base_url:
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0) as client:
            yield client


class FakeService:
    """A small local stand-in for a paid service a LiteLLM class calls (Lakera, Presidio, ...): an ASGI app that
    records each JSON request as ``(path, body)`` and answers ``handler(path, body)`` as JSON."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.requests: list[tuple[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import orjson

        from tests.apps import read_request

        body = await read_request(scope, receive, send)
        if body is None:
            return
        payload = orjson.loads(body) if body else None
        self.requests.append((scope["path"], payload))
        status, answer = self.handler(scope["path"], payload)
        raw = orjson.dumps(answer)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": raw})
