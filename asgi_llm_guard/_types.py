"""ASGI type aliases, kept local so the package needs nothing beyond the standard library to type-check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Any-typed parameters, so apps whose own scope types are narrower (Litestar's TypedDicts) are accepted too.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

#: The call types of docs/reference.md#hooks, in the order LiteLLM lists them.
CALL_TYPES = (
    "completion",
    "text_completion",
    "embeddings",
    "image_generation",
    "anthropic_messages",
    "moderation",
    "audio_transcription",
    "responses",
)
