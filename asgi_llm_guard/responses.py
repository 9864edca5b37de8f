"""Answers the middleware writes itself: OpenAI-shaped errors and refusals, JSON and SSE (SPEC 4 and 5).

Refusals of chat, text-completion and Responses API requests are normal 200 answers in the format the client asked
for, so the official SDKs parse them as completions or streams. Unlike LiteLLM, ``model`` is the model the client
asked for (LiteLLM answers ``"model": null``, which strict clients reject) and ``usage`` is all zeros (not ``{}``).
Every string goes through orjson, so a message holding ``"\\n\\ndata: "`` stays inside its JSON string and cannot
inject SSE frames; header values are never built from messages.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson

from .errors import GuardError
from .sse import DONE, encode_json

logger = logging.getLogger("asgi_llm_guard")

REFUSED_AS_ANSWER = frozenset({"completion", "text_completion", "responses"})

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


_ID_PREFIX = secrets.token_hex(6)  # per process, so ids differ across replicas and restarts
_ID_COUNTER = itertools.count()


def new_id(prefix: str) -> str:
    """A unique response id (``chatcmpl-…``, ``cmpl-…``, ``resp_…``, ``msg_…``). Ids need to be unique, not
    secret: a per-process random prefix and a counter, instead of reading the OS's randomness per refusal."""
    return f"{prefix}{_ID_PREFIX}{next(_ID_COUNTER):012x}"


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def _encode_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """An exception's headers as ASGI headers, keeping only what HTTP allows (RFC 9110 5.1, 5.5): a name that is
    a token, a value of visible characters, spaces and tabs. Anything else (``"1\r\nX-Injected: yes"``, other
    control characters, text beyond latin-1) is dropped with a warning, so a hook cannot split the response or
    make the server refuse it."""
    encoded = []
    for name, value in headers.items():
        name, value = str(name).strip(), str(value).strip()
        if _TOKEN.fullmatch(name) and _FIELD_VALUE.fullmatch(value):  # both only admit latin-1 code points
            encoded.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        else:
            logger.warning("dropped response header %r: HTTP headers cannot carry it", name[:40])
    return encoded


#: An answer the middleware writes itself: status, headers (with ``content-length``), body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


def answer(status: int, body: bytes, base: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]) -> Answer:
    return status, [*base, (b"content-length", str(len(body)).encode()), *extra], body


def error_answer(error: GuardError, rejected_stage: str | None = None) -> Answer:
    """The JSON error of SPEC 5 with the error's own headers (e.g. ``Retry-After``)."""
    extra = _encode_headers(error.headers) if error.headers else []
    if rejected_stage:
        extra.append((b"x-llm-guard-rejected", rejected_stage.encode()))
    if error.status_code in _NO_BODY:  # a hook raised HTTPException(204) or (304): HTTP allows no body at all
        return error.status_code, extra, b""
    return answer(error.status_code, error.body(), _JSON_HEADERS, extra)


_NO_BODY = frozenset({204, 304})


# -- chat completions ----------------------------------------------------------------------------------------


def chat_completion(message: str, model: str) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": message},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def chat_chunk(
    stream_id: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None
) -> dict[str, Any]:
    return {
        "id": stream_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _usage_chunk(base: dict[str, Any]) -> dict[str, Any]:
    return {**base, "choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


def chat_refusal_events(message: str, model: str, include_usage: bool) -> Iterator[bytes]:
    stream_id, created = new_id("chatcmpl-"), int(time.time())
    yield encode_json(chat_chunk(stream_id, created, model, {"role": "assistant", "content": message}, None))
    finish = chat_chunk(stream_id, created, model, {}, "stop")
    yield encode_json(finish)
    if include_usage:
        yield encode_json(_usage_chunk(finish))
    yield DONE


# -- text completions ----------------------------------------------------------------------------------------


def text_completion(
    message: str,
    model: str,
    stream_id: str | None = None,
    created: int | None = None,
    finish_reason: str | None = "stop",
) -> dict[str, Any]:
    return {
        "id": stream_id or new_id("cmpl-"),
        "object": "text_completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"text": message, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def text_refusal_events(message: str, model: str, include_usage: bool) -> Iterator[bytes]:
    stream_id, created = new_id("cmpl-"), int(time.time())
    content = text_completion(message, model, stream_id, created, finish_reason=None)
    del content["usage"]
    yield encode_json(content)
    finish = text_completion("", model, stream_id, created, finish_reason="stop")
    del finish["usage"]
    yield encode_json(finish)
    if include_usage:
        yield encode_json(_usage_chunk(finish))
    yield DONE


# -- Responses API -------------------------------------------------------------------------------------------


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _output_message(message_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": message_id,
        "status": status,
        "role": "assistant",
        "content": [_output_text(text)] if status == "completed" else [],
    }


def responses_object(
    message: str,
    model: str,
    response_id: str | None = None,
    created: int | None = None,
    status: str = "completed",
) -> dict[str, Any]:
    done = status == "completed"
    return {
        "id": response_id or new_id("resp_"),
        "object": "response",
        "created_at": created if created is not None else int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": [_output_message(new_id("msg_"), message, "completed")] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": {
            "input_tokens": 0,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 0,
        }
        if done
        else None,
        "user": None,
        "metadata": {},
    }


def _named(event: dict[str, Any]) -> bytes:
    return encode_json(event, event=event["type"])


def responses_closing_events(
    message: str,
    response: dict[str, Any],
    sequence: int,
    *,
    output: Mapping[int, dict[str, Any]] | None = None,
    open_message: int | None = None,
    parts: Sequence[dict[str, Any]] = (),
    content_index: int = 0,
    open_text: str | None = None,
) -> Iterator[bytes]:
    """The events that end a Responses API stream with ``message`` as (further) output text, numbered from
    ``sequence``, then ``response.completed`` listing every output item.

    ``output`` holds the items already sent, by ``output_index``: each as finished, or as added if it never was.
    ``open_message`` is the ``output_index`` of a message among them that is still open; ``message`` goes into its
    output_text part at ``content_index`` (``open_text``: that part's text so far, or None when no part is open,
    which opens one there), after its finished ``parts``. Without one, a new message at the next free
    ``output_index`` carries ``message``: an index the client has seen again would be a different item to it (the
    ``openai`` SDK raises on a duplicate index).
    """
    items = dict(output or {})
    events: list[dict[str, Any]] = []
    if open_message is None or open_message not in items:
        index = max(items, default=-1) + 1
        base = _output_message(new_id("msg_"), "", "in_progress")
        parts, content_index, open_text = (), 0, None
        events.append({"type": "response.output_item.added", "output_index": index, "item": base})
    else:
        index, base = open_message, items[open_message]
    where = {"item_id": base["id"], "output_index": index, "content_index": content_index}
    if open_text is None:
        events.append({"type": "response.content_part.added", **where, "part": _output_text("")})
        open_text = ""
    text = open_text + message
    part = _output_text(text)
    item = {**base, "status": "completed", "content": [*parts, part]}
    items[index] = item
    events += [
        {"type": "response.output_text.delta", **where, "delta": message, "logprobs": []},
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": index, "item": item},
        {
            "type": "response.completed",
            "response": {
                **response,
                "status": "completed",
                "output": [items[i] for i in sorted(items)],
                "usage": responses_object("", response.get("model", ""))["usage"],
            },
        },
    ]
    for number, event in enumerate(events, sequence):
        yield _named({"type": event["type"], "sequence_number": number, **event})


def responses_refusal_events(message: str, model: str) -> Iterator[bytes]:
    response = responses_object(message, model, status="in_progress")
    yield _named({"type": "response.created", "sequence_number": 0, "response": response})
    yield from responses_closing_events(message, response, 1)


# -- dispatch ------------------------------------------------------------------------------------------------


def requested_format(data: Mapping[str, Any]) -> tuple[bool, bool]:
    """What the client asked for, read before any hook ran: (``stream``, ``stream_options.include_usage``)."""
    if data.get("stream") is not True:
        return False, False
    options = data.get("stream_options")  # parsed JSON: a dict (an ABC isinstance here would cost more)
    return True, type(options) is dict and options.get("include_usage") is True


def refusal_answer(message: str, call_type: str, stream: bool, usage: bool, model: str, stage: str) -> Answer:
    """``message`` as the answer the client's request asked for (SPEC 4); a 400 error for non-answer call types."""
    if call_type not in REFUSED_AS_ANSWER:
        return error_answer(GuardError(400, message), stage)
    rejected = [(b"x-llm-guard-rejected", stage.encode())]
    if not stream:
        if call_type == "completion":
            body = chat_completion(message, model)
        elif call_type == "text_completion":
            body = text_completion(message, model)
        else:
            body = responses_object(message, model)
        return answer(200, orjson.dumps(body), _JSON_HEADERS, rejected)
    if call_type == "completion":
        events = chat_refusal_events(message, model, usage)
    elif call_type == "text_completion":
        events = text_refusal_events(message, model, usage)
    else:
        events = responses_refusal_events(message, model)
    return answer(200, b"".join(events), _SSE_HEADERS, rejected)
