"""The texts a guardrail sees in each wire format, and where each is written back (SPEC 10).

A *slot* is ``(container, key)`` with ``container[key]`` a ``str``: reading slots gives ``inputs["texts"]``,
writing the guardrail's texts into the same slots, in the same order, rewrites exactly those texts in place.
Requests and non-streamed responses are read by the request's wire format (``formats/``), tool-call arguments
left out (a guardrail gets them in ``tool_calls``). Streams need more than a format's event slots: which channel
(choice, content part, block) a delta belongs to, which event closes a channel, and how to make a new text event;
:data:`STREAM_FORMATS` has that per call type, so the engine asks a table, never tests a call type itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .formats import FORMATS, TextSlot

Slot = TextSlot
#: A stream's text channel: the choice index (chat, text), ``(output_index, content_index)`` (Responses), the
#: content block index (Anthropic).
Channel = Any
#: ``closes`` answer meaning every channel.
ALL = "all"


def _is_tool_argument(slot: TextSlot) -> bool:
    container, key = slot
    if key == "arguments":
        return True
    return key == "input" and isinstance(container, Mapping) and container.get("type") == "custom_tool_call"


def request_slots(data: Mapping[str, Any], call_type: str) -> list[TextSlot]:
    """Every user-visible text of a request (SPEC 10), tool-call arguments left out (they are in
    ``tool_calls``)."""
    wire = FORMATS.get(call_type)
    if wire is None:
        return []
    return [slot for slot in wire.request_text_slots(data) if not _is_tool_argument(slot)]


def request_extras(data: Mapping[str, Any], call_type: str) -> dict[str, Any]:
    """``tool_calls``, ``structured_messages``, ``images`` and ``model`` of a request, where it has them."""
    extras: dict[str, Any] = {}
    wire = FORMATS.get(call_type)
    if wire is not None:
        messages = wire.structured_messages(data)
        if messages is not None:
            extras["structured_messages"] = messages
        tool_calls = wire.tool_calls(data)
        if tool_calls:
            extras["tool_calls"] = tool_calls
        images = wire.images(data)
        if images:
            extras["images"] = images
    if isinstance(data.get("model"), str):
        extras["model"] = data["model"]
    return extras


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def response_slots(body: Any, call_type: str) -> list[TextSlot]:
    """The output texts of a non-streamed JSON response."""
    if not isinstance(body, dict):
        return []
    if call_type == "audio_transcription":  # the JSON form of a transcription: {"text": ...}
        text = body.get("text")
        return [TextSlot(body, "text")] if isinstance(text, str) and text else []
    wire = FORMATS.get(call_type)
    return wire.response_text_slots(body) if wire is not None else []


def response_extras(body: Any, call_type: str) -> dict[str, Any]:
    """``tool_calls`` and ``model`` of a response, where it has them."""
    extras: dict[str, Any] = {}
    if not isinstance(body, dict):
        return extras
    tool_calls: list[Any] = []
    for choice in _list(body.get("choices")):
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("tool_calls"), list):
            tool_calls.extend(message["tool_calls"])
    for item in _list(body.get("output")) + _list(body.get("content")):
        if isinstance(item, dict) and item.get("type") in ("function_call", "custom_tool_call", "tool_use"):
            tool_calls.append(item)
    if tool_calls:
        extras["tool_calls"] = tool_calls
    if isinstance(body.get("model"), str):
        extras["model"] = body["model"]
    return extras


# -- stream events ----------------------------------------------------------------------------------------


class StreamFormat:
    """How one wire format's stream events carry output text. The default is a stream with no text."""

    #: Events carry ``sequence_number`` (the Responses API): inserting or dropping an event renumbers the rest.
    sequenced = False

    def slots(self, chunk: dict[str, Any]) -> list[tuple[Channel, Any, Any]]:
        """The text deltas of an event: ``(channel, container, key)``."""
        return []

    def text_only(self, chunk: dict[str, Any]) -> bool:
        """Whether the event carries nothing but its text, so it may be dropped while its text is held back."""
        return False

    def closes(self, chunk: dict[str, Any]) -> list[Channel] | str:
        """The channels whose text must all be out before this event (:data:`ALL` for every channel)."""
        return []

    def carrier(self, template: dict[str, Any], text: str) -> dict[str, Any]:
        """A new text event like ``template`` (an earlier text event of the channel) carrying ``text``."""
        raise NotImplementedError

    def complete(self, chunk: dict[str, Any], emitted: Mapping[Channel, str]) -> None:
        """Rewrite, in place, whole texts an event repeats (the Responses API's ``done`` events) to the text that
        was emitted for their channel."""


class ChatStream(StreamFormat):
    def slots(self, chunk: dict[str, Any]) -> list[tuple[Channel, Any, Any]]:
        found = []
        for choice in _list(chunk.get("choices")):
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

    def closes(self, chunk: dict[str, Any]) -> list[Channel] | str:
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return ALL  # the usage chunk comes after every choice finished
        return [c.get("index", 0) for c in choices if isinstance(c, dict) and c.get("finish_reason") is not None]

    def carrier(self, template: dict[str, Any], text: str) -> dict[str, Any]:
        choice = template["choices"][0]
        event = {**template, "choices": [{**choice, "delta": {"content": text}, "finish_reason": None}]}
        if event.get("usage") is not None:
            event["usage"] = None
        return event


class TextCompletionStream(ChatStream):
    def slots(self, chunk: dict[str, Any]) -> list[tuple[Channel, Any, Any]]:
        return [
            (choice.get("index", 0), choice, "text")
            for choice in _list(chunk.get("choices"))
            if isinstance(choice, dict) and isinstance(choice.get("text"), str)
        ]

    def text_only(self, chunk: dict[str, Any]) -> bool:
        choices = chunk.get("choices")
        if not isinstance(choices, list) or len(choices) != 1 or chunk.get("usage"):
            return False
        choice = choices[0]
        return choice.get("finish_reason") is None and not choice.get("logprobs")

    def carrier(self, template: dict[str, Any], text: str) -> dict[str, Any]:
        choice = template["choices"][0]
        event = {**template, "choices": [{**choice, "text": text, "finish_reason": None}]}
        if event.get("usage") is not None:
            event["usage"] = None
        return event


class ResponsesStream(StreamFormat):
    sequenced = True

    def slots(self, chunk: dict[str, Any]) -> list[tuple[Channel, Any, Any]]:
        if chunk.get("type") == "response.output_text.delta" and isinstance(chunk.get("delta"), str):
            return [((chunk.get("output_index"), chunk.get("content_index")), chunk, "delta")]
        return []

    def text_only(self, chunk: dict[str, Any]) -> bool:
        return chunk.get("type") == "response.output_text.delta"

    def closes(self, chunk: dict[str, Any]) -> list[Channel] | str:
        kind = chunk.get("type")
        if kind in ("response.output_text.done", "response.content_part.done"):
            return [(chunk.get("output_index"), chunk.get("content_index"))]
        if kind == "response.output_item.done":
            return ALL
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            return ALL
        return []

    def carrier(self, template: dict[str, Any], text: str) -> dict[str, Any]:
        event = {**template, "delta": text}
        if "logprobs" in event:
            event["logprobs"] = []
        return event

    def complete(self, chunk: dict[str, Any], emitted: Mapping[Channel, str]) -> None:
        kind = chunk.get("type")
        if kind == "response.output_text.done":
            channel = (chunk.get("output_index"), chunk.get("content_index"))
            if channel in emitted:
                chunk["text"] = emitted[channel]
        elif kind == "response.content_part.done":
            channel = (chunk.get("output_index"), chunk.get("content_index"))
            part = chunk.get("part")
            if channel in emitted and isinstance(part, dict) and part.get("type") == "output_text":
                chunk["part"] = {**part, "text": emitted[channel]}
        elif kind == "response.output_item.done":
            item = chunk.get("item")
            if isinstance(item, dict):
                chunk["item"] = _completed_item(item, chunk.get("output_index"), emitted)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = chunk.get("response")
            if isinstance(response, dict) and isinstance(response.get("output"), list):
                output = [
                    _completed_item(item, index, emitted) if isinstance(item, dict) else item
                    for index, item in enumerate(response["output"])
                ]
                chunk["response"] = {**response, "output": output}


def _completed_item(item: dict[str, Any], output_index: Any, emitted: Mapping[Channel, str]) -> dict[str, Any]:
    content = item.get("content")
    if item.get("type") != "message" or not isinstance(content, list):
        return item
    parts = []
    for index, part in enumerate(content):
        channel = (output_index, index)
        if isinstance(part, dict) and part.get("type") == "output_text" and channel in emitted:
            part = {**part, "text": emitted[channel]}
        parts.append(part)
    return {**item, "content": parts}


class AnthropicStream(StreamFormat):
    def slots(self, chunk: dict[str, Any]) -> list[tuple[Channel, Any, Any]]:
        if chunk.get("type") != "content_block_delta":
            return []
        delta = chunk.get("delta")
        if isinstance(delta, dict) and delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
            return [(chunk.get("index", 0), delta, "text")]
        return []

    def text_only(self, chunk: dict[str, Any]) -> bool:
        return bool(self.slots(chunk))

    def closes(self, chunk: dict[str, Any]) -> list[Channel] | str:
        kind = chunk.get("type")
        if kind == "content_block_stop":
            return [chunk.get("index", 0)]
        if kind in ("message_delta", "message_stop"):
            return ALL
        return []

    def carrier(self, template: dict[str, Any], text: str) -> dict[str, Any]:
        return {**template, "delta": {**template["delta"], "text": text}}


#: Call type → how its stream events carry text.
STREAM_FORMATS: dict[str, StreamFormat] = {
    "completion": ChatStream(),
    "text_completion": TextCompletionStream(),
    "responses": ResponsesStream(),
    "anthropic_messages": AnthropicStream(),
}
NO_STREAM_TEXT = StreamFormat()
