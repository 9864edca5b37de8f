"""Anthropic's Messages API (``/v1/messages``, call type ``anthropic_messages``).

Guarded like chat, in its own wire format: the end user is ``metadata.user_id``; a refusal is a normal
``message`` (or its event stream, ``message_start`` through ``message_stop``, with no ``[DONE]``: Anthropic
streams have none); an error is ``{"type": "error", "error": {"type", "message"}}`` with Anthropic's error types,
and after a stream started it is an ``error`` event that ends the stream. A stream refused midway closes the open
content block, adds a text block at the next index carrying the message, then ``message_delta`` and
``message_stop``: never a second ``message_start``, which the ``anthropic`` SDKs would take for a new message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from ..errors import GuardError
from ..sse import encode_json
from ._walk import is_list, str_slot
from .base import ALL_CHANNELS, RequestedFormat, StreamState, StreamText, TextSlot, WireFormat, new_id

#: Anthropic's error ``type`` by status; other 4xx are ``invalid_request_error``, other 5xx ``api_error``.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for a status: ``error_type(529) == "overloaded_error"``."""
    known = _ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def _envelope(error: GuardError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(error.status_code), "message": error.message}}


def _message(message_id: str, model: str, content: list[dict[str, Any]], stop_reason: str | None) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }


def _event(event: dict[str, Any]) -> bytes:
    return encode_json(event, event=event["type"])


def _text_block_events(index: int, message: str) -> list[bytes]:
    return [
        _event({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        _event(
            {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": message}}
        ),
        _event({"type": "content_block_stop", "index": index}),
    ]


def _ending_events(output_tokens: int) -> list[bytes]:
    return [
        _event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            }
        ),
        _event({"type": "message_stop"}),
    ]


def _blocks(value: Any) -> Iterator[Mapping[str, Any]]:
    if is_list(value):
        for block in value:
            if isinstance(block, Mapping):
                yield block


def _content_slots(container: Mapping[str, Any], key: str) -> Iterator[TextSlot]:
    """A ``content`` or ``system`` field: a string, or blocks whose ``text`` blocks hold text (a tool result's or
    search result's content is a string or blocks of its own; a document's text is its ``text`` source's ``data``
    or its ``content`` source's blocks)."""
    value = container.get(key)
    if isinstance(value, str):
        yield from str_slot(container, key)
        return
    for block in _blocks(value):
        kind = block.get("type")
        if kind == "text" or (kind is None and "text" in block):  # a lenient downstream may take it untyped
            yield from str_slot(block, "text")
        elif kind == "tool_result" or kind == "search_result":
            yield from _content_slots(block, "content")
        elif kind == "document":  # a plain-text document is text the model reads, as a text block is
            source = block.get("source")
            if isinstance(source, Mapping):
                if source.get("type") == "text":
                    yield from str_slot(source, "data")
                elif source.get("type") == "content":
                    yield from _content_slots(source, "content")


def _is_text(block: Mapping[str, Any], kind: str) -> bool:
    """A text block (``kind="text"``) or delta (``"text_delta"``), or one with no ``type`` but a ``text``: the
    ``anthropic`` SDK reads an untyped block or delta as text (``TextBlock``, ``TextDelta``), so a guard must too."""
    found = block.get("type", None)
    return found == kind or (found is None and "text" in block)


def _text_block_slots(content: Any) -> list[TextSlot]:
    return [slot for block in _blocks(content) if _is_text(block, "text") for slot in str_slot(block, "text")]


class AnthropicStreamState(StreamState):
    observes_events = True  # the close needs the open block and the next free index

    def __init__(self, wire: WireFormat, model: str) -> None:
        super().__init__(wire, model)
        self.started = False  # message_start went out
        self.open_block: int | None = None  # the index of a content block started and not stopped
        self.next_index = 0  # the index a new content block takes
        self.output_tokens = 0

    def observe(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "content_block_delta" or kind == "ping":
            return  # the most frequent events change nothing here
        index = event.get("index")
        if kind == "content_block_start":
            if isinstance(index, int):
                self.open_block = index
                self.next_index = max(self.next_index, index + 1)
        elif kind == "content_block_stop":
            if index == self.open_block:
                self.open_block = None
        elif kind == "message_start":
            self.started = True
            message = event.get("message")
            usage = message.get("usage") if isinstance(message, Mapping) else None
            self._count(usage)
        elif kind == "message_delta":
            self._count(event.get("usage"))
        elif kind == "message_stop":
            self.finished = True

    def _count(self, usage: Any) -> None:
        if isinstance(usage, Mapping) and isinstance(usage.get("output_tokens"), int):
            self.output_tokens = usage["output_tokens"]

    def closing_refusal(self, message: str, first: dict[str, Any] | None) -> bytes:
        events: list[bytes] = []
        if not self.started:  # only comments or pings went out: the message itself has not begun
            events.append(_event({"type": "message_start", "message": _message(new_id("msg_"), self.model, [], None)}))
        if self.open_block is not None:
            events.append(_event({"type": "content_block_stop", "index": self.open_block}))
        events += _text_block_events(self.next_index, message)
        events += _ending_events(self.output_tokens)
        return b"".join(events)


class AnthropicStreamText(StreamText):
    def slots(self, chunk: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
        kind = chunk.get("type")
        if kind == "content_block_delta":
            delta = chunk.get("delta")
            if isinstance(delta, dict) and _is_text(delta, "text_delta") and isinstance(delta.get("text"), str):
                return [(chunk.get("index", 0), delta, "text")]
        elif kind == "content_block_start":  # a text block may start with text (Anthropic's own start with "")
            block = chunk.get("content_block")
            if isinstance(block, dict) and _is_text(block, "text") and isinstance(block.get("text"), str):
                return [(chunk.get("index", 0), block, "text")]
        return []

    def text_only(self, chunk: dict[str, Any]) -> bool:
        return chunk.get("type") == "content_block_delta" and bool(self.slots(chunk))

    def closes(self, chunk: dict[str, Any]) -> list[Any] | str:
        kind = chunk.get("type")
        if kind == "content_block_stop":
            return [chunk.get("index", 0)]
        if kind in ("message_delta", "message_stop"):
            return ALL_CHANNELS
        return []

    def carrier(self, template: dict[str, Any], text: str) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": template.get("index", 0),
                "delta": {"type": "text_delta", "text": text}}

    def echoes(self, chunk: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
        # Anthropic's message_start has empty content, but a downstream may put the answer's text there; the SDK's
        # messages.stream() keeps it in the final message, so it is checked there, whole.
        if chunk.get("type") != "message_start":
            return []
        message = chunk.get("message")
        if not isinstance(message, dict):
            return []
        if isinstance(message.get("content"), str):
            return [(("message_start", 0), message, "content")]
        return [(("message_start", position), slot.container, slot.key)
                for position, slot in enumerate(_text_block_slots(message.get("content")))]


class AnthropicMessages(WireFormat):
    stream_text = AnthropicStreamText()
    refusal_is_answer = True
    end_user_param = "metadata.user_id"
    stream_end_events = frozenset({"message_stop"})
    end_user_key = None  # nested: end_user() reads it
    checks_request = True

    def check_request(self, data: Mapping[str, Any]) -> GuardError | None:
        # What a guard must read right: a wrongly typed field could hide a prompt from the hooks, or turn a
        # refusal into the wrong form, so these are 400s here rather than left to the app (docs/routes.md).
        if "messages" in data and not isinstance(data["messages"], list):
            return GuardError(400, "messages: Input should be a valid list", param="messages")
        if "stream" in data and not isinstance(data["stream"], bool):
            return GuardError(400, "stream: Input should be a valid boolean", param="stream")
        system = data.get("system")
        if "system" in data and not (
            isinstance(system, str) or (isinstance(system, list) and all(isinstance(b, dict) for b in system))
        ):
            return GuardError(400, "system: Input should be a string or a list of content blocks", param="system")
        return None

    def end_user(self, data: Mapping[str, Any]) -> object:
        metadata = data.get("metadata")
        return metadata.get("user_id") if isinstance(metadata, Mapping) else None

    def _request_slots(self, data: Mapping[str, Any]) -> Iterator[TextSlot]:
        yield from _content_slots(data, "system")
        for message in _blocks(data.get("messages")):
            yield from _content_slots(message, "content")

    def tool_calls(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [
            dict(block)
            for message in _blocks(data.get("messages"))
            for block in _blocks(message.get("content"))
            if block.get("type") == "tool_use"
        ]

    def structured_messages(self, data: Mapping[str, Any]) -> list[Any] | None:
        messages = data.get("messages")
        return list(messages) if is_list(messages) else None

    def images(self, data: Mapping[str, Any]) -> list[str]:
        urls = []
        for message in _blocks(data.get("messages")):
            for block in _blocks(message.get("content")):
                source = block.get("source")
                if block.get("type") == "image" and isinstance(source, Mapping) and source.get("type") == "url":
                    url = source.get("url")
                    if isinstance(url, str) and url:
                        urls.append(url)
        return urls

    def response_text_slots(self, body: Any) -> list[TextSlot]:
        if not isinstance(body, Mapping):
            return []
        if isinstance(body.get("content"), str):  # the SDK hands a string `content` to its caller as it is
            return list(str_slot(body, "content"))
        return _text_block_slots(body.get("content"))

    def response_tool_calls(self, body: Mapping[str, Any]) -> list[Any]:
        return [block for block in _blocks(body.get("content")) if block.get("type") == "tool_use"]

    def event_text_slots(self, event: Mapping[str, Any]) -> list[TextSlot]:
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, Mapping) and _is_text(delta, "text_delta"):
                return list(str_slot(delta, "text"))
        elif kind == "content_block_start":
            return _text_block_slots([event.get("content_block")])
        return []

    def refusal_json(self, message: str, model: str) -> Any:
        return _message(new_id("msg_"), model, [{"type": "text", "text": message}], "end_turn")

    def refusal_events(self, message: str, model: str, requested: RequestedFormat) -> bytes:
        start = _event({"type": "message_start", "message": _message(new_id("msg_"), model, [], None)})
        return start + b"".join(_text_block_events(0, message) + _ending_events(0))

    def error_body(self, error: GuardError) -> bytes:
        return orjson.dumps(_envelope(error))

    def error_events(self, error: GuardError) -> bytes:
        return encode_json(_envelope(error), event="error")

    def stream_state(self, model: str) -> StreamState:
        return AnthropicStreamState(self, model)
