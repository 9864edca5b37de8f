"""OpenAI Chat Completions (``/chat/completions``, call type ``completion``).

A refusal is a normal ``chat.completion`` (or stream of ``chat.completion.chunk``) carrying the message, so the
official SDKs parse it as any answer (docs/reference.md#refusals). Unlike LiteLLM, ``model`` is the model the client
asked for (LiteLLM answers ``"model": null``, which strict clients reject) and ``usage`` is all zeros (not ``{}``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from ..sse import DONE, encode_json
from ._walk import image_urls, is_list, list_or_empty, message_list_slots, str_slot
from .base import ALL_CHANNELS, RequestedFormat, StreamState, StreamText, TextSlot, WireFormat, new_id

_ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


# Built once: making a NamedTuple costs about a microsecond, on every request.
_NOT_STREAMED = RequestedFormat(False, False)
_STREAMED = RequestedFormat(True, False)
_STREAMED_WITH_USAGE = RequestedFormat(True, True)


def usage_chunk(base: dict[str, Any]) -> dict[str, Any]:
    return {**base, "choices": [], "usage": dict(_ZERO_USAGE)}


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
        "usage": dict(_ZERO_USAGE),
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


def _choices(body: Any) -> Iterator[Mapping[str, Any]]:
    choices = body.get("choices") if isinstance(body, Mapping) else None
    if is_list(choices):
        for choice in choices:
            if isinstance(choice, Mapping):
                yield choice


class ChatStreamState(StreamState):
    # A finish chunk went out. orjson escapes every quote inside a string, so this can only be a key with a
    # string value: one scan of bytes the rewriter has anyway, instead of looking into each chunk's choices.
    finish_marker = b'"finish_reason":"'

    def closing_refusal(self, message: str, first: dict[str, Any] | None) -> bytes:
        first = first or {}
        created: int = first["created"] if isinstance(first.get("created"), int) else 0
        stream_id: str = first["id"] if isinstance(first.get("id"), str) else new_id("chatcmpl-")
        events = [encode_json(chat_chunk(stream_id, created, self.model, {"content": message}, None))]
        # Exactly one chunk of a refused stream carries `finish_reason` (docs/reference.md#stream-refusals): none more
        # if the app's went out (a hook refusing on the usage chunk, or an iterator hook at the end of the stream).
        if not self.finished:
            events.append(encode_json(chat_chunk(stream_id, created, self.model, {}, "stop")))
        events.append(DONE)
        return b"".join(events)


class ChatStreamText(StreamText):
    def slots(self, chunk: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
        found = []
        for choice in list_or_empty(chunk.get("choices")):
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                found.append((choice.get("index", 0), delta, "content"))
        return found

    def text_only(self, chunk: dict[str, Any]) -> bool:
        choices = chunk.get("choices")
        if not isinstance(choices, list) or len(choices) != 1 or chunk.get("usage"):
            return False
        choice = choices[0]
        delta = choice.get("delta")
        return (
            choice.get("finish_reason") is None
            and not choice.get("logprobs")
            and isinstance(delta, dict)
            and delta.keys() <= {"content"}
        )

    def closes(self, chunk: dict[str, Any]) -> list[Any] | str:
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return ALL_CHANNELS  # the usage chunk comes after every choice finished
        return [c.get("index", 0) for c in choices if isinstance(c, dict) and c.get("finish_reason") is not None]

    def carrier(self, template: dict[str, Any], text: str) -> dict[str, Any]:
        choice = template["choices"][0]
        event = {**template, "choices": [{**choice, "delta": {"content": text}, "finish_reason": None}]}
        if event.get("usage") is not None:
            event["usage"] = None
        return event


class OpenAIChat(WireFormat):
    stream_text = ChatStreamText()
    refusal_is_answer = True
    ends_with_done = True

    def requested(self, data: Mapping[str, Any]) -> RequestedFormat:
        """``stream`` and ``stream_options.include_usage`` (a refused stream then ends with a usage chunk)."""
        if data.get("stream") is not True:
            return _NOT_STREAMED
        options = data.get("stream_options")  # parsed JSON: a dict (an ABC isinstance here would cost more)
        return _STREAMED_WITH_USAGE if type(options) is dict and options.get("include_usage") is True else _STREAMED

    def _request_slots(self, data: Mapping[str, Any]) -> Iterator[TextSlot]:
        return message_list_slots(data.get("messages"))

    def tool_calls(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        messages = data.get("messages")
        calls: list[dict[str, Any]] = []
        if is_list(messages):
            for message in messages:
                found = message.get("tool_calls") if isinstance(message, Mapping) else None
                if is_list(found):
                    calls += [call for call in found if isinstance(call, dict)]
        return calls

    def structured_messages(self, data: Mapping[str, Any]) -> list[Any] | None:
        messages = data.get("messages")
        return list(messages) if is_list(messages) else None

    def images(self, data: Mapping[str, Any]) -> list[str]:
        messages = data.get("messages")
        if not is_list(messages):
            return []
        return [url for m in messages if isinstance(m, Mapping) for url in image_urls(m.get("content"))]

    def response_text_slots(self, body: Any) -> list[TextSlot]:
        return [slot for choice in _choices(body) for slot in str_slot(choice.get("message"), "content")]

    def response_tool_calls(self, body: Mapping[str, Any]) -> list[Any]:
        calls: list[Any] = []
        for choice in _choices(body):
            message = choice.get("message")
            if isinstance(message, dict) and isinstance(message.get("tool_calls"), list):
                calls.extend(message["tool_calls"])
        return calls

    def event_text_slots(self, event: Mapping[str, Any]) -> list[TextSlot]:
        return [slot for choice in _choices(event) for slot in str_slot(choice.get("delta"), "content")]

    def refusal_json(self, message: str, model: str) -> Any:
        return chat_completion(message, model)

    def refusal_events(self, message: str, model: str, requested: RequestedFormat) -> bytes:
        stream_id, created = new_id("chatcmpl-"), int(time.time())
        finish = chat_chunk(stream_id, created, model, {}, "stop")
        events = [
            encode_json(chat_chunk(stream_id, created, model, {"role": "assistant", "content": message}, None)),
            encode_json(finish),
        ]
        if requested.include_usage:
            events.append(encode_json(usage_chunk(finish)))
        events.append(DONE)
        return b"".join(events)

    def stream_state(self, model: str) -> StreamState:
        return ChatStreamState(self, model)
