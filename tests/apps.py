"""Downstream apps and helpers shared by the tests: a recording OpenAI-compatible ASGI app and clients."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from asgi_llm_guard import LLMHookMiddleware


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    state: Any

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


def chat_completion(model: str, content: str = "Hi there!") -> dict[str, Any]:
    return {
        "id": "chatcmpl-down",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def chat_chunk(model: str, content: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-down",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def text_chunk(model: str, text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "cmpl-down",
        "object": "text_completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }


def sse(chunks: Iterable[dict[str, Any]], done: bool = True) -> list[bytes]:
    out = [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks]
    if done:
        out.append(b"data: [DONE]\n\n")
    return out


#: The named events of a streamed Responses API refusal, in order (docs/reference.md#refusals).
RESPONSES_REFUSAL_EVENTS = [
    "response.created",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


async def read_request(scope: Any, receive: Any, send: Any, lifespan: list[str] | None = None) -> bytes | None:
    """What every test downstream does first: answer the lifespan protocol (``None`` once it has ended, the
    message types noted in ``lifespan``), or read the whole request body."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if lifespan is not None:
                lifespan.append(message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return None
    return await receive_body(receive) if scope["method"] == "POST" else b""


async def receive_body(receive: Any) -> bytes:
    """The whole request body, however many ``http.request`` messages it came in."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


class Downstream:
    """An OpenAI-compatible ASGI app that records every request it receives.

    Chat and text completions answer from ``words`` (streamed when the request says ``stream: true``, one chunk
    per word, ``delay`` seconds apart); embeddings, moderations and images answer small fixed objects; ``status``
    and ``error_body`` make it answer an error instead. GET /v1/models answers a list.
    """

    def __init__(
        self,
        *,
        words: tuple[str, ...] = ("Hello", " from", " the", " model"),
        delay: float = 0.0,
        status: int = 200,
        error_body: bytes | None = None,
    ) -> None:
        self.words = words
        self.delay = delay
        self.status = status
        self.error_body = error_body
        self.received: list[Received] = []
        self.lifespan: list[str] = []
        self.finished = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = await read_request(scope, receive, send, self.lifespan)
        if body is None:
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.received.append(Received(scope["path"], headers, body, scope.get("state", {}).get("llm_guard")))
        if scope["method"] == "GET":
            await self._json(send, 200, {"object": "list", "data": [{"id": "m", "object": "model"}]})
            return
        if self.status >= 400:
            error = self.error_body or orjson.dumps(
                {"error": {"message": "downstream says no", "type": "invalid_request_error", "code": None}}
            )
            await self._raw(send, self.status, error, b"application/json")
            return
        data = orjson.loads(body) if body else {}
        model = data.get("model", "m")
        path = scope["path"]
        if path.endswith("/chat/completions") or path.endswith("/completions"):
            chat = path.endswith("/chat/completions")
            if data.get("stream"):
                chunks = [chat_chunk(model, w) if chat else text_chunk(model, w) for w in self.words]
                chunks.append(chat_chunk(model, None, "stop") if chat else text_chunk(model, "", "stop"))
                await self._stream(send, sse(chunks))
                return
            if chat:
                answer = chat_completion(model, "".join(self.words))
            else:
                answer = {**text_chunk(model, "".join(self.words), "stop"), "usage": {"total_tokens": 1}}
            await self._json(send, 200, answer)
            return
        if path.endswith("/embeddings"):
            await self._json(
                send,
                200,
                {
                    "object": "list",
                    "model": model,
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                    "usage": {"prompt_tokens": 1, "total_tokens": 1},
                },
            )
            return
        await self._json(send, 200, {"ok": True, "path": path})

    async def _json(self, send: Any, status: int, payload: Any) -> None:
        await self._raw(send, status, orjson.dumps(payload), b"application/json")

    async def _raw(self, send: Any, status: int, body: bytes, content_type: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
        self.finished += 1

    async def _stream(self, send: Any, events: list[bytes]) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        for event in events:
            if self.delay:
                await asyncio.sleep(self.delay)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.finished += 1


def client(app: Any) -> httpx.AsyncClient:
    """An in-process client (note: ASGITransport buffers whole responses)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def guarded(
    *hooks: object, downstream: Downstream | None = None, **options: Any
) -> tuple[LLMHookMiddleware, Downstream]:
    down = downstream or Downstream()
    return LLMHookMiddleware(down, hooks=list(hooks), **options), down


CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "good morning"}], "user": "u-1"}


def chat(content: str = "good morning", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": content}], **extra}


@dataclass
class Script:
    """A scripted ASGI conversation: feed ``receive`` messages, record everything ``send`` gets."""

    incoming: list[dict[str, Any]]
    sent: list[dict[str, Any]] = field(default_factory=list)
    hang_after: bool = True
    disconnect: asyncio.Event = field(default_factory=asyncio.Event)
    receive_calls: int = 0

    async def receive(self) -> dict[str, Any]:
        self.receive_calls += 1
        if self.incoming:
            return self.incoming.pop(0)
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(next(m["status"] for m in self.sent if m["type"] == "http.response.start"))

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def http_scope(
    path: str = "/v1/chat/completions",
    method: str = "POST",
    headers: list[tuple[bytes, bytes]] | None = None,
    root_path: str = "",
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": headers if headers is not None else [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


def body_messages(body: bytes, parts: int = 1) -> list[dict[str, Any]]:
    size = max(1, -(-len(body) // parts))
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    return [
        {"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1}
        for index, piece in enumerate(pieces)
    ]
