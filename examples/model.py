"""The model behind both example services: a built-in deterministic model, or a real upstream.

By default a built-in model answers, with no key and no network: it echoes the last user message back
("You said: …"), streams word by word, and embeds text as small unit vectors derived from a hash, so the
same request always gets the same answer. Token counts are word counts: close enough for an example.

With ``OPENAI_BASE_URL`` set (e.g. ``https://api.openai.com/v1``; ``OPENAI_API_KEY`` is sent as the bearer
key), every call is forwarded to that OpenAI-compatible upstream with httpx instead: streamed answers are
relayed as their bytes arrive, and upstream errors reach the client with their own status and body.

The environment is read on every call, not at import, so a test (or an operator) can switch modes without
re-importing anything. Each call is one function the web frameworks share::

    reply = await answer("chat/completions", {"model": "echo-1", "messages": [...]})
    reply.status_code, reply.media_type, reply.content  # content: bytes, or an async iterator of SSE bytes
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

BUILTIN_MODELS = ("echo-1",)
DEFAULT_DIMENSIONS = 8


@dataclass
class Reply:
    """What the model answers: a status, and a whole body or a stream of SSE bytes."""

    status_code: int
    content: bytes | AsyncIterator[bytes]
    media_type: str = "application/json"


async def answer(endpoint: str, data: dict[str, Any] | None = None) -> Reply:
    """Answer ``endpoint`` (``"chat/completions"``, ``"completions"``, ``"embeddings"`` or ``"models"``).

    ``data`` is the request's JSON body; ``None`` for ``GET /models``.
    """
    base_url = os.environ.get("OPENAI_BASE_URL")
    if base_url:
        return await forward(base_url, endpoint, data)
    return BUILTIN[endpoint](data or {})


# -- the upstream --------------------------------------------------------------------------------------------


async def forward(base_url: str, endpoint: str, data: dict[str, Any] | None) -> Reply:
    """Send the call to an OpenAI-compatible upstream; its answer comes back as it is, streamed or not.

    One client per call keeps the example short; a real service would keep one ``httpx.AsyncClient`` for the
    app's lifetime (connection pooling).
    """
    headers = {}
    if api_key := os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {api_key}"
    client = httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", headers=headers,
                               timeout=httpx.Timeout(600.0, connect=10.0))
    method = "GET" if data is None else "POST"
    try:
        response = await client.send(client.build_request(method, endpoint, json=data), stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        return error(502, f"The upstream model at {base_url} could not be reached ({type(exc).__name__}).")
    media_type = response.headers.get("content-type", "application/json")
    if response.is_success and media_type.startswith("text/event-stream"):
        return Reply(response.status_code, relay(client, response), media_type)
    try:
        body = await response.aread()
    finally:
        await response.aclose()
        await client.aclose()
    return Reply(response.status_code, body, media_type)


async def relay(client: httpx.AsyncClient, response: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream's SSE bytes as they arrive (decoded from any Content-Encoding), then close the client."""
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    finally:
        await response.aclose()
        await client.aclose()


# -- the built-in model --------------------------------------------------------------------------------------


def chat_completions(data: dict[str, Any]) -> Reply:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        return error(400, "'messages' must be a non-empty list.", param="messages")
    texts = [text_of(m.get("content")) for m in messages if isinstance(m, dict)]
    users = [text_of(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    reply = reply_to(users[-1] if users else "")
    usage = count_usage(texts, reply)
    model, stream_id, created = str(data.get("model", BUILTIN_MODELS[0])), "chatcmpl-" + new_id(), now()
    if data.get("stream") is not True:
        return json_reply({
            "id": stream_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage,
        })

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {"id": stream_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    chunks = [chunk({"role": "assistant", "content": ""}, None)]
    chunks += [chunk({"content": word}, None) for word in words_of(reply)]
    chunks.append(chunk({}, "stop"))
    return sse_reply(chunks, usage if include_usage(data) else None)


def completions(data: dict[str, Any]) -> Reply:
    prompt = data.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        return error(400, "'prompt' must be a string or a list of strings.", param="prompt")
    replies = [reply_to(p) for p in prompts]
    usage = count_usage(prompts, " ".join(replies))
    model, stream_id, created = str(data.get("model", BUILTIN_MODELS[0])), "cmpl-" + new_id(), now()

    def choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}

    def completion(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": stream_id, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": None, "choices": choices}

    if data.get("stream") is not True:
        choices = [choice(i, r, "stop") for i, r in enumerate(replies)]
        return json_reply({**completion(choices), "usage": usage})
    chunks = [completion([choice(i, word, None)]) for i, r in enumerate(replies) for word in words_of(r)]
    chunks += [completion([choice(i, "", "stop")]) for i in range(len(replies))]
    return sse_reply(chunks, usage if include_usage(data) else None)


def embeddings(data: dict[str, Any]) -> Reply:
    value = data.get("input")
    # OpenAI accepts a string, a list of strings, one list of token ids, or a list of token-id lists.
    one_token_list = isinstance(value, list) and bool(value) and all(isinstance(v, int) for v in value)
    items = [value] if isinstance(value, str) or one_token_list else value
    if not isinstance(items, list) or not items:
        return error(400, "'input' must be a string, a list of strings or of token lists.", param="input")
    dimensions = data.get("dimensions", DEFAULT_DIMENSIONS)
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= 1024:
        return error(400, "'dimensions' must be an integer from 1 to 1024.", param="dimensions")
    base64_format = data.get("encoding_format") == "base64"  # what the openai SDK asks for by default
    rows = []
    for index, item in enumerate(items):
        vector = embed(item if isinstance(item, str) else json.dumps(item), dimensions)
        encoded: Any = vector
        if base64_format:  # little-endian float32, as OpenAI sends it
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        rows.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(len(item.split()) if isinstance(item, str) else len(item) for item in items)
    return json_reply({"object": "list", "data": rows, "model": str(data.get("model", BUILTIN_MODELS[0])),
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def models(data: dict[str, Any]) -> Reply:
    return json_reply({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "asgi-llm-guard-examples"}
        for name in BUILTIN_MODELS
    ]})


BUILTIN: dict[str, Callable[[dict[str, Any]], Reply]] = {
    "chat/completions": chat_completions,
    "completions": completions,
    "embeddings": embeddings,
    "models": models,
}


# -- helpers -------------------------------------------------------------------------------------------------


def reply_to(text: str) -> str:
    """The built-in model's whole intelligence."""
    return f"You said: {text}" if text.strip() else "You said nothing."


def text_of(content: Any) -> str:
    """A message's text: a string, or the ``text`` of its content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def words_of(text: str) -> list[str]:
    """``text`` in stream-sized pieces that join back to it exactly."""
    return re.findall(r"\s*\S+", text) or [text]


def embed(text: str, dimensions: int) -> list[float]:
    """A unit vector from the text's hash: equal texts, equal vectors."""
    digest = hashlib.shake_256(text.encode()).digest(2 * dimensions)
    values = [int.from_bytes(digest[i:i + 2], "little") / 32767.5 - 1.0 for i in range(0, len(digest), 2)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def count_usage(prompts: list[str], completion: str) -> dict[str, int]:
    prompt_tokens = sum(len(p.split()) for p in prompts)
    completion_tokens = len(completion.split())
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def include_usage(data: dict[str, Any]) -> bool:
    options = data.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def new_id() -> str:
    return uuid.uuid4().hex[:24]


def now() -> int:
    return int(time.time())


def json_reply(body: dict[str, Any], status_code: int = 200) -> Reply:
    return Reply(status_code, json.dumps(body, separators=(",", ":")).encode())


def error(status_code: int, message: str, param: str | None = None) -> Reply:
    """An OpenAI error envelope."""
    kind = "invalid_request_error" if status_code < 500 else "api_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return json_reply(body, status_code)


def sse_reply(chunks: list[dict[str, Any]], usage: dict[str, int] | None) -> Reply:
    """The chunks as OpenAI SSE: ``usage: null`` on each and a closing usage chunk when the client asked for
    ``stream_options.include_usage``, then ``data: [DONE]``."""
    if usage is not None:
        chunks = [{**c, "usage": None} for c in chunks] + [{**chunks[-1], "choices": [], "usage": usage}]

    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return Reply(200, events(), "text/event-stream")
