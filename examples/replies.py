"""What the example model answers, in the two wire formats the examples speak: OpenAI's and Anthropic's.

A :class:`Reply` is what both web frameworks turn into their own response (see ``to_response`` in each app)::

    reply = json_reply({"object": "list", "data": []})
    reply = error(400, "'messages' must be a non-empty list.", api="anthropic")
    reply.status_code, reply.media_type, reply.content, reply.headers
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

API = Literal["openai", "anthropic"]


@dataclass
class Reply:
    """What the model answers: a status, a whole body or a stream of SSE bytes, and headers to pass on (those of
    a real upstream: ``Retry-After``, ``x-ratelimit-*``, ``request-id``, ...)."""

    status_code: int
    content: bytes | AsyncIterator[bytes]
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(body: dict[str, Any], status_code: int = 200) -> Reply:
    return Reply(status_code, dumps(body))


def error(status_code: int, message: str, param: str | None = None, api: API = "openai") -> Reply:
    """An error in the envelope of ``api``: OpenAI's ``{"error": {...}}`` or Anthropic's
    ``{"type": "error", "error": {...}}``."""
    if api == "anthropic":
        kind = "invalid_request_error" if status_code < 500 else "api_error"
        return json_reply({"type": "error", "error": {"type": kind, "message": message}}, status_code)
    kind = "invalid_request_error" if status_code < 500 else "api_error"
    return json_reply({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code)


def openai_sse(chunks: Iterable[dict[str, Any]]) -> Reply:
    """Chat or text-completion chunks as OpenAI's SSE: ``data:`` lines, then ``data: [DONE]``."""

    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield b"data: " + dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return Reply(200, events(), "text/event-stream")


def named_sse(events: Iterable[dict[str, Any]]) -> Reply:
    """Events named by their ``type`` (the Responses API's and Anthropic's streams): an ``event:`` line and a
    ``data:`` line each, and no ``[DONE]``."""

    async def encoded() -> AsyncIterator[bytes]:
        for event in events:
            yield b"event: " + event["type"].encode() + b"\ndata: " + dumps(event) + b"\n\n"

    return Reply(200, encoded(), "text/event-stream")


def dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
