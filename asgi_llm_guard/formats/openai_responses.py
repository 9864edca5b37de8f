"""The OpenAI Responses API (``/responses``, call type ``responses``).

A refusal is a ``response`` object whose output is one assistant message with one ``output_text`` part; streamed,
the API's named events from ``response.created`` through ``response.completed``, each with its
``sequence_number`` (docs/reference.md#refusals). A stream refused midway continues the sequence and the output items
the client has seen, so the ``openai`` SDK's ``responses.stream()`` accepts it (it raises on a duplicate
``output_index`` and on an item it saw added and never finished).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..errors import GuardError
from ..sse import DONE, encode_json
from ._walk import image_urls, input_slots, is_list, list_or_empty, str_slot
from .base import ALL_CHANNELS, RequestedFormat, StreamState, StreamText, TextSlot, WireFormat, new_id

_ZERO_USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 0,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 0,
}


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


def responses_object(message: str, model: str, status: str = "completed") -> dict[str, Any]:
    done = status == "completed"
    return {
        "id": new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
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
        "usage": dict(_ZERO_USAGE) if done else None,
        "user": None,
        "metadata": {},
    }


def _named(event: dict[str, Any]) -> bytes:
    return encode_json(event, event=event["type"])


def closing_events(
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
                "usage": dict(_ZERO_USAGE),
            },
        },
    ]
    for number, event in enumerate(events, sequence):
        yield _named({"type": event["type"], "sequence_number": number, **event})


def _error_event(error: GuardError, sequence: int) -> bytes:
    # Its data also holds the "error" envelope: the openai SDK raises APIError only from that key, and reads a
    # Responses API `error` event as one more event of the stream.
    envelope = {
        "type": "error",
        "code": str(error.status_code),
        "message": error.message,
        "param": error.param,
        "sequence_number": sequence,
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": str(error.status_code),
        },
    }
    return encode_json(envelope, event="error") + DONE


class ResponsesStreamState(StreamState):
    observes_events = True  # the close continues the sequence and the output items the client has seen

    def __init__(self, wire: WireFormat, model: str) -> None:
        super().__init__(wire, model)
        self.response: dict[str, Any] | None = None
        self.sequence = 0
        self.items: dict[int, dict[str, Any]] = {}  # output_index: the item as sent (added, then done)
        self.unfinished: set[int] = set()  # the output_index of items added and not done
        self.message: int | None = None  # the output_index of the message item still open, if any
        self.parts: list[dict[str, Any]] = []  # its finished content parts
        self.part_count = 0  # its content parts added
        self.part_open = False  # its last part is an open output_text part...
        self.text = ""  # ...holding this text so far

    def observe(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        sequence = event.get("sequence_number")
        if isinstance(sequence, int):
            self.sequence = sequence + 1
        index = event.get("output_index")
        if index is None:
            if kind == "response.created" and isinstance(event.get("response"), dict):
                self.response = event["response"]
            return
        if kind == "response.output_text.delta":
            if index == self.message and isinstance(event.get("delta"), str):
                self.text += event["delta"]
        elif kind == "response.output_item.added" or kind == "response.output_item.done":
            item = event.get("item")
            if not isinstance(item, dict) or not isinstance(index, int):
                return
            self.items[index] = item
            if kind == "response.output_item.done":
                self.unfinished.discard(index)
                if index == self.message:
                    self.message = None
                return
            self.unfinished.add(index)
            if item.get("type") == "message" and isinstance(item.get("id"), str):
                self.message, self.parts, self.part_count, self.part_open = index, [], 0, False
        elif index == self.message:
            if kind == "response.content_part.added":
                part = event.get("part")
                self.part_count += 1
                self.part_open = isinstance(part, dict) and part.get("type") == "output_text"
                self.text = ""
            elif kind == "response.content_part.done":
                part = event.get("part")
                self.parts.append(part if isinstance(part, dict) else {"type": "output_text", "text": self.text})
                self.part_open = False

    def closing_refusal(self, message: str, first: dict[str, Any] | None) -> bytes:
        response = self.response or responses_object("", self.model, status="in_progress")
        # Every item sent goes into response.completed (the SDK raises on one it saw added and not finished):
        # those that never finished, other than the message the refusal closes, as cut off.
        output = {
            index: {**item, "status": "incomplete"}
            if index in self.unfinished and index != self.message and "status" in item
            else item
            for index, item in self.items.items()
        }
        events = closing_events(
            message,
            response,
            self.sequence,
            output=output,
            open_message=self.message,
            parts=self.parts,
            content_index=self.part_count - 1 if self.part_open else self.part_count,
            open_text=self.text if self.part_open else None,
        )
        return b"".join(events)

    def closing_error(self, error: GuardError) -> bytes:
        return _error_event(error, self.sequence)


def _output_text_slots(items: Any) -> Iterator[TextSlot]:
    if not is_list(items):
        return
    for item in items:
        content = item.get("content") if isinstance(item, Mapping) else None
        if is_list(content):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "output_text":
                    yield from str_slot(part, "text")


class ResponsesStreamText(StreamText):
    sequenced = True

    def slots(self, chunk: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
        if chunk.get("type") == "response.output_text.delta" and isinstance(chunk.get("delta"), str):
            return [((chunk.get("output_index"), chunk.get("content_index")), chunk, "delta")]
        return []

    def text_only(self, chunk: dict[str, Any]) -> bool:
        return chunk.get("type") == "response.output_text.delta"

    def closes(self, chunk: dict[str, Any]) -> list[Any] | str:
        kind = chunk.get("type")
        if kind in ("response.output_text.done", "response.content_part.done"):
            return [(chunk.get("output_index"), chunk.get("content_index"))]
        if kind == "response.output_item.done":
            return ALL_CHANNELS
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            return ALL_CHANNELS
        return []

    def carrier(self, template: dict[str, Any], text: str) -> dict[str, Any]:
        event = {**template, "delta": text}
        if "logprobs" in event:
            event["logprobs"] = []
        return event

    def echoes(self, chunk: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
        kind = chunk.get("type")
        if kind == "response.output_text.done":
            return [((chunk.get("output_index"), chunk.get("content_index")), chunk, "text")]
        if kind == "response.content_part.done":
            part = chunk.get("part")
            if isinstance(part, dict) and part.get("type") == "output_text":
                return [((chunk.get("output_index"), chunk.get("content_index")), part, "text")]
            return []
        if kind == "response.output_item.done":
            return _item_texts(chunk.get("item"), chunk.get("output_index"))
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            response = chunk.get("response")
            output = response.get("output") if isinstance(response, dict) else None
            return [found for index, item in enumerate(list_or_empty(output)) for found in _item_texts(item, index)]
        return []

    def complete(self, chunk: dict[str, Any], emitted: Mapping[Any, str]) -> None:
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


def _item_texts(item: Any, output_index: Any) -> list[tuple[Any, Any, Any]]:
    if not isinstance(item, dict) or item.get("type") != "message":
        return []
    return [
        ((output_index, index), part, "text")
        for index, part in enumerate(list_or_empty(item.get("content")))
        if isinstance(part, dict) and part.get("type") == "output_text"
    ]


def _completed_item(item: dict[str, Any], output_index: Any, emitted: Mapping[Any, str]) -> dict[str, Any]:
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


class OpenAIResponses(WireFormat):
    stream_text = ResponsesStreamText()
    refusal_is_answer = True
    stream_end_events = frozenset({"response.completed", "response.failed", "response.incomplete"})

    def _request_slots(self, data: Mapping[str, Any]) -> Iterator[TextSlot]:
        yield from str_slot(data, "instructions")
        yield from input_slots(data)

    def tool_calls(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        items = data.get("input")
        if not is_list(items):
            return []
        kinds = ("function_call", "custom_tool_call")
        return [item for item in items if isinstance(item, dict) and item.get("type") in kinds]

    def structured_messages(self, data: Mapping[str, Any]) -> list[Any] | None:
        items = data.get("input")
        if isinstance(items, str):
            return [{"role": "user", "content": items}]
        return list(items) if is_list(items) else None

    def images(self, data: Mapping[str, Any]) -> list[str]:
        items = data.get("input")
        if not is_list(items):
            return []
        found = list(image_urls(items))
        for item in items:
            if isinstance(item, Mapping):
                found += image_urls(item.get("content"))
        return found

    def response_text_slots(self, body: Any) -> list[TextSlot]:
        return list(_output_text_slots(body.get("output"))) if isinstance(body, Mapping) else []

    def response_tool_calls(self, body: Mapping[str, Any]) -> list[Any]:
        kinds = ("function_call", "custom_tool_call")
        output = list_or_empty(body.get("output"))
        return [item for item in output if isinstance(item, dict) and item.get("type") in kinds]

    def event_text_slots(self, event: Mapping[str, Any]) -> list[TextSlot]:
        if event.get("type") == "response.output_text.delta":
            return list(str_slot(event, "delta"))
        return []

    def event_echo_slots(self, event: Mapping[str, Any]) -> list[TextSlot]:
        kind = event.get("type")
        if kind == "response.output_text.done":
            return list(str_slot(event, "text"))
        if kind == "response.content_part.done":
            part = event.get("part")
            return list(str_slot(part, "text")) if isinstance(part, Mapping) else []
        if kind == "response.output_item.done":
            return list(_output_text_slots([event.get("item")]))
        if kind == "response.completed":
            return self.response_text_slots(event.get("response"))
        return []

    def refusal_json(self, message: str, model: str) -> Any:
        return responses_object(message, model)

    def refusal_events(self, message: str, model: str, requested: RequestedFormat) -> bytes:
        response = responses_object(message, model, status="in_progress")
        created = _named({"type": "response.created", "sequence_number": 0, "response": response})
        return created + b"".join(closing_events(message, response, 1))

    def error_events(self, error: GuardError) -> bytes:
        return _error_event(error, 0)

    def stream_state(self, model: str) -> StreamState:
        return ResponsesStreamState(self, model)
