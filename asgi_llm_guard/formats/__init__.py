"""Wire formats: one module per API the guard speaks, behind the interface of :mod:`.base`.

``FORMATS`` maps each call type (docs/reference.md#hooks) to its format. To add one (say Gemini's ``generateContent``):
a module here with a :class:`~.base.WireFormat` subclass, an entry below, and its path in ``routes.DEFAULT_ROUTES``.
"""

from __future__ import annotations

from .anthropic import AnthropicMessages
from .base import ALL_CHANNELS, RequestedFormat, StreamState, StreamText, TextSlot, WireFormat, new_id
from .openai_chat import OpenAIChat
from .openai_completions import OpenAITextCompletions
from .openai_endpoints import OpenAIInputEndpoint, OpenAIPromptEndpoint
from .openai_responses import OpenAIResponses

__all__ = [
    "ALL_CHANNELS", "FORMATS", "RequestedFormat", "StreamState", "StreamText", "TextSlot", "WireFormat", "new_id",
]

#: The wire format of each call type, in the order of docs/reference.md#hooks.
FORMATS: dict[str, WireFormat] = {
    "completion": OpenAIChat("completion"),
    "text_completion": OpenAITextCompletions("text_completion"),
    "embeddings": OpenAIInputEndpoint("embeddings"),
    "image_generation": OpenAIPromptEndpoint("image_generation"),
    "anthropic_messages": AnthropicMessages("anthropic_messages"),
    "moderation": OpenAIInputEndpoint("moderation"),
    "audio_transcription": OpenAIPromptEndpoint("audio_transcription", multipart=True),
    "responses": OpenAIResponses("responses"),
}
