"""The texts a guardrail sees in each wire format, and where each is written back (docs/reference.md#guardrails).

A *slot* is ``(container, key)`` with ``container[key]`` a ``str``: reading slots gives ``inputs["texts"]``,
writing the guardrail's texts into the same slots, in the same order, rewrites exactly those texts in place.
Requests and non-streamed responses are read by the request's wire format (``formats/``), tool-call arguments
left out (a guardrail gets them in ``tool_calls``). Streams are the format's too (``WireFormat.stream_text``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .formats import FORMATS, TextSlot

Slot = TextSlot
#: A stream's text channel: the choice index (chat, text), ``(output_index, content_index)`` (Responses), the
#: content block index (Anthropic).
Channel = Any


def request_slots(data: Mapping[str, Any], call_type: str) -> list[TextSlot]:
    """Every user-visible text of a request (docs/reference.md#guardrails), tool-call arguments left out (they are in
    ``tool_calls``)."""
    wire = FORMATS.get(call_type)
    return wire.guardrail_text_slots(data) if wire is not None else []


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


def response_slots(body: Any, call_type: str) -> list[TextSlot]:
    """The output texts of a non-streamed JSON response."""
    if not isinstance(body, dict):
        return []
    wire = FORMATS.get(call_type)
    return wire.response_text_slots(body) if wire is not None else []


def response_extras(body: Any, call_type: str) -> dict[str, Any]:
    """``tool_calls`` and ``model`` of a response, where it has them."""
    extras: dict[str, Any] = {}
    if not isinstance(body, dict):
        return extras
    wire = FORMATS.get(call_type)
    tool_calls = wire.response_tool_calls(body) if wire is not None else []
    if tool_calls:
        extras["tool_calls"] = tool_calls
    if isinstance(body.get("model"), str):
        extras["model"] = body["model"]
    return extras
