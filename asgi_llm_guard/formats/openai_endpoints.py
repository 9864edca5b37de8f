"""The OpenAI endpoints whose answer is not text for a person to read: embeddings, image generation, moderations
and audio transcriptions/translations. A refusal cannot be dressed as one of their answers (a vector, an image, a
transcript), so it is a 400 error carrying the message (docs/reference.md#refusals), in the OpenAI error envelope.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ._walk import input_slots, prompt_slots, str_slot
from .base import RequestedFormat, TextSlot, WireFormat


class OpenAIInputEndpoint(WireFormat):
    """Embeddings and moderations: the texts are ``input`` (a string, strings, or moderation's text parts)."""

    def _request_slots(self, data: Mapping[str, Any]) -> Iterator[TextSlot]:
        return input_slots(data)


class OpenAIPromptEndpoint(WireFormat):
    """Image generation and audio: the text is ``prompt`` (audio also takes ``multipart/form-data``, whose text
    fields are the request's ``data``)."""

    def __init__(self, call_type: str, *, multipart: bool = False) -> None:
        super().__init__(call_type)
        self.accepts_multipart = multipart
        self.answers_text = multipart  # the audio endpoints: response_format text, srt or vtt

    def requested(self, data: Mapping[str, Any]) -> RequestedFormat:
        # A form's fields are strings: the openai SDK sends `stream=true` for a streamed transcription.
        stream = data.get("stream")
        return RequestedFormat(stream is True or (self.accepts_multipart and stream in ("true", "True")))

    def _request_slots(self, data: Mapping[str, Any]) -> Iterator[TextSlot]:
        return prompt_slots(data)

    def response_text_slots(self, body: Any) -> list[TextSlot]:
        # A transcription's JSON answer: {"text": ...}; an image or a vector is no text.
        return list(str_slot(body, "text")) if self.answers_text else []
