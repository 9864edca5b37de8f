"""The model behind both example services: a built-in deterministic model, or a real upstream.

By default a built-in model answers, with no key and no network: it echoes the last user message back
("You said: …"), streams word by word, and embeds text as small unit vectors derived from a hash, so the
same request always gets the same answer. Token counts are word counts: close enough for an example. It speaks
OpenAI's chat, text completions, embeddings and Responses API, and Anthropic's Messages API, streamed or not.

With ``OPENAI_BASE_URL`` set (e.g. ``https://api.openai.com/v1``; ``OPENAI_API_KEY`` is sent as the bearer
key), the OpenAI calls are forwarded to that OpenAI-compatible upstream with httpx instead; with
``ANTHROPIC_BASE_URL`` set (e.g. ``https://api.anthropic.com``; ``ANTHROPIC_API_KEY`` is sent as ``x-api-key``,
with ``anthropic-version``), the Messages calls are forwarded there (see :mod:`examples.upstream`).

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
import re
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from examples.replies import Reply, error, json_reply, named_sse, openai_sse
from examples.upstream import configured, forward

__all__ = ["BUILTIN", "BUILTIN_MODELS", "Reply", "answer"]

BUILTIN_MODELS = ("echo-1",)
DEFAULT_DIMENSIONS = 8


async def answer(endpoint: str, data: dict[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> Reply:
    """Answer ``endpoint``: ``"chat/completions"``, ``"completions"``, ``"embeddings"``, ``"responses"``,
    ``"messages"`` (Anthropic's) or ``"models"``.

    ``data`` is the request's JSON body, ``None`` for ``GET /models``; ``headers`` the request's headers, of which
    a forwarded Messages call passes on ``anthropic-version`` and ``anthropic-beta``.
    """
    upstream = configured(endpoint, headers)
    if upstream is not None:
        return await forward(upstream, endpoint, data)
    return BUILTIN[endpoint](data or {})


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
    return openai_sse(with_usage(chunks, usage if include_usage(data) else None))


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
    return openai_sse(with_usage(chunks, usage if include_usage(data) else None))


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


def responses(data: dict[str, Any]) -> Reply:
    """The Responses API: ``input`` (a string or a list of items) answered by one assistant message."""
    items = data.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        return error(400, "'input' must be a string or a non-empty list of items.", param="input")
    turns = [i for i in items if isinstance(i, dict) and i.get("type", "message") == "message"]
    users = [text_of(m.get("content")) for m in turns if m.get("role") == "user"]
    instructions = data.get("instructions")
    prompts = [text_of(m.get("content")) for m in turns]
    prompts += [instructions] if isinstance(instructions, str) else []
    reply = reply_to(users[-1] if users else "")
    counted = count_usage(prompts, reply)
    usage = {"input_tokens": counted["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": counted["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": counted["total_tokens"]}
    model = str(data.get("model", BUILTIN_MODELS[0]))
    response: dict[str, Any] = {
        "id": "resp_" + new_id(), "object": "response", "created_at": now(), "status": "completed",
        "error": None, "incomplete_details": None,
        "instructions": instructions if isinstance(instructions, str) else None,
        "max_output_tokens": data.get("max_output_tokens"), "model": model, "output": [],
        "parallel_tool_calls": True, "previous_response_id": None, "store": False,
        "temperature": data.get("temperature"), "text": {"format": {"type": "text"}}, "tool_choice": "auto",
        "tools": [], "top_p": data.get("top_p"), "truncation": "disabled", "usage": usage,
        "user": data.get("user"), "metadata": data.get("metadata") or {},
    }
    part = {"type": "output_text", "text": reply, "annotations": [], "logprobs": []}
    message = {"id": "msg_" + new_id(), "type": "message", "status": "completed", "role": "assistant",
               "content": [part]}
    if data.get("stream") is not True:
        return json_reply({**response, "output": [message]})

    where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**response, "status": "in_progress", "usage": None}},
        {"type": "response.in_progress", "response": {**response, "status": "in_progress", "usage": None}},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**message, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
        *({"type": "response.output_text.delta", **where, "delta": word, "logprobs": []}
          for word in words_of(reply)),
        {"type": "response.output_text.done", **where, "text": reply, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": "response.completed", "response": {**response, "output": [message]}},
    ]
    return named_sse({**event, "sequence_number": n} for n, event in enumerate(events))


def messages(data: dict[str, Any]) -> Reply:
    """Anthropic's Messages API: the last user message answered by one text block, streamed as Anthropic's
    named events (``message_start``, ``content_block_start``, ``content_block_delta``, ...)."""
    turns = data.get("messages")
    if not isinstance(turns, list) or not turns:
        return error(400, "messages: must be a non-empty list", api="anthropic")
    system = data.get("system")
    prompts = [text_of(m.get("content")) for m in turns if isinstance(m, dict)]
    prompts += [text_of(system)] if system else []
    users = [text_of(m.get("content")) for m in turns if isinstance(m, dict) and m.get("role") == "user"]
    reply = reply_to(users[-1] if users else "")
    counted = count_usage(prompts, reply)
    message: dict[str, Any] = {
        "id": "msg_" + new_id(), "type": "message", "role": "assistant",
        "model": str(data.get("model", BUILTIN_MODELS[0])), "content": [{"type": "text", "text": reply}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": counted["prompt_tokens"], "output_tokens": counted["completion_tokens"]},
    }
    if data.get("stream") is not True:
        return json_reply(message)

    start = {**message, "content": [], "stop_reason": None,
             "usage": {"input_tokens": counted["prompt_tokens"], "output_tokens": 1}}
    return named_sse([
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},  # Anthropic's servers send these too; clients must skip them
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}
          for word in words_of(reply)),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": counted["completion_tokens"]}},
        {"type": "message_stop"},
    ])


BUILTIN: dict[str, Callable[[dict[str, Any]], Reply]] = {
    "chat/completions": chat_completions,
    "completions": completions,
    "embeddings": embeddings,
    "responses": responses,
    "messages": messages,
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


def with_usage(chunks: list[dict[str, Any]], usage: dict[str, int] | None) -> list[dict[str, Any]]:
    """The chunks as OpenAI streams them when the client asked for ``stream_options.include_usage``: ``usage:
    null`` on each, then a closing chunk with no choices and the usage."""
    if usage is None:
        return chunks
    return [{**c, "usage": None} for c in chunks] + [{**chunks[-1], "choices": [], "usage": usage}]
