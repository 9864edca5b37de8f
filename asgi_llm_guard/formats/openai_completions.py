"""OpenAI (legacy) text completions (``/completions``, call type ``text_completion``).

A refusal is a normal ``text_completion`` object (or stream of them) carrying the message in ``choices[0].text``;
LiteLLM drops the text of a refused text-completion stream, we keep it (docs/reference.md#stream-refusals).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from ..sse import DONE, encode_json
from ._walk import is_list, list_or_empty, prompt_slots, str_slot
from .base import RequestedFormat, StreamState, TextSlot, WireFormat, new_id
from .openai_chat import ChatStreamState, ChatStreamText, OpenAIChat, usage_chunk


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


def _chunk(message: str, model: str, stream_id: str, created: int, finish_reason: str | None) -> dict[str, Any]:
    chunk = text_completion(message, model, stream_id, created, finish_reason)
    del chunk["usage"]
    return chunk


def _choice_text_slots(body: Any) -> list[TextSlot]:
    choices = body.get("choices") if isinstance(body, Mapping) else None
    if not is_list(choices):
        return []
    return [slot for choice in choices for slot in str_slot(choice, "text")]


class TextStreamState(ChatStreamState):
    def closing_refusal(self, message: str, first: dict[str, Any] | None) -> bytes:
        first = first or {}
        created: int = first["created"] if isinstance(first.get("created"), int) else 0
        stream_id: str = first["id"] if isinstance(first.get("id"), str) else new_id("cmpl-")
        # The message in choices[0].text (docs/reference.md#stream-refusals), then the one finish chunk unless the app's
        # went out.
        pieces = ((message, None), ("", "stop"))[: 1 if self.finished else 2]
        events = [encode_json(_chunk(text, self.model, stream_id, created, finish)) for text, finish in pieces]
        return b"".join(events) + DONE


class TextStreamText(ChatStreamText):
    def slots(self, chunk: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
        return [
            (choice.get("index", 0), choice, "text")
            for choice in list_or_empty(chunk.get("choices"))
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


class OpenAITextCompletions(WireFormat):
    stream_text = TextStreamText()
    refusal_is_answer = True
    ends_with_done = True

    requested = OpenAIChat.requested  # the same stream and stream_options.include_usage

    def _request_slots(self, data: Mapping[str, Any]) -> Iterator[TextSlot]:
        return prompt_slots(data)

    def response_text_slots(self, body: Any) -> list[TextSlot]:
        return _choice_text_slots(body)

    def event_text_slots(self, event: Mapping[str, Any]) -> list[TextSlot]:
        return _choice_text_slots(event)

    def refusal_json(self, message: str, model: str) -> Any:
        return text_completion(message, model)

    def refusal_events(self, message: str, model: str, requested: RequestedFormat) -> bytes:
        stream_id, created = new_id("cmpl-"), int(time.time())
        finish = _chunk("", model, stream_id, created, "stop")
        events = [encode_json(_chunk(message, model, stream_id, created, None)), encode_json(finish)]
        if requested.include_usage:
            events.append(encode_json(usage_chunk(finish)))
        events.append(DONE)
        return b"".join(events)

    def stream_state(self, model: str) -> StreamState:
        return TextStreamState(self, model)
