"""Walkers that find the text places (:class:`TextSlot`) of the shapes the OpenAI formats share.

Odd shapes (a number where a string belongs, a part without ``text``) are skipped, never raised on: the
downstream service, not a guard, decides whether a body is valid. Only non-empty strings are slots.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeGuard

from .base import TextSlot

# Content part types whose "text" is text (chat, Responses API, moderation input). A part with no "type" but a
# string "text" is read too: a lenient downstream may accept it, so a guard must not be blind to it.
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})


def is_list(value: Any) -> TypeGuard[list[Any] | tuple[Any, ...]]:
    return isinstance(value, (list, tuple))


def str_slot(container: Any, key: Any) -> Iterator[TextSlot]:
    if isinstance(container, Mapping):
        value = container.get(key)
    elif is_list(container) and isinstance(key, int) and 0 <= key < len(container):
        value = container[key]
    else:
        return
    if isinstance(value, str) and value:
        yield TextSlot(container, key)


def prompt_slots(data: Mapping[str, Any]) -> Iterator[TextSlot]:
    # text_completion: str or list of str; token-id lists (list of int, list of lists of int) are skipped.
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        yield from str_slot(data, "prompt")
    elif is_list(prompt):
        for index in range(len(prompt)):
            yield from str_slot(prompt, index)


def input_slots(data: Mapping[str, Any]) -> Iterator[TextSlot]:
    # Embeddings (str, list of str, token ids), moderation (also text/image parts) and Responses API input
    # (str or items) share the key "input"; one reader covers all, skipping what is not text.
    value = data.get("input")
    if isinstance(value, str):
        yield from str_slot(data, "input")
        return
    if not is_list(value):
        return
    for index, item in enumerate(value):
        if isinstance(item, str):
            yield from str_slot(value, index)
        elif isinstance(item, Mapping):
            yield from _input_item_slots(item)


def _input_item_slots(item: Mapping[str, Any]) -> Iterator[TextSlot]:
    kind = item.get("type")
    if kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, str):
            yield from str_slot(item, "output")
        else:
            yield from parts_slots(output)
    elif kind in ("function_call", "custom_tool_call"):
        yield from str_slot(item, "arguments")
        yield from str_slot(item, "input")
    elif kind == "message" or "role" in item or "content" in item:
        yield from message_slots(item)
    else:
        yield from part_slots(item)


def message_list_slots(messages: Any) -> Iterator[TextSlot]:
    if not is_list(messages):
        return
    for message in messages:
        if isinstance(message, Mapping):
            yield from message_slots(message)


def message_slots(message: Mapping[str, Any]) -> Iterator[TextSlot]:
    content = message.get("content")
    if isinstance(content, str):
        yield from str_slot(message, "content")
    else:
        yield from parts_slots(content)
    yield from str_slot(message, "refusal")
    tool_calls = message.get("tool_calls")
    if is_list(tool_calls):
        for call in tool_calls:
            if isinstance(call, Mapping):
                yield from str_slot(call.get("function"), "arguments")
    yield from str_slot(message.get("function_call"), "arguments")


def parts_slots(parts: Any) -> Iterator[TextSlot]:
    if not is_list(parts):
        return
    for index, part in enumerate(parts):
        if isinstance(part, str):
            yield from str_slot(parts, index)
        elif isinstance(part, Mapping):
            yield from part_slots(part)


def part_slots(part: Mapping[str, Any]) -> Iterator[TextSlot]:
    kind = part.get("type")
    if kind in _TEXT_PART_TYPES or (kind is None and "text" in part):
        yield from str_slot(part, "text")
    elif kind == "refusal":
        yield from str_slot(part, "refusal")


def image_urls(parts: Any) -> Iterator[str]:
    """``image_url`` parts (chat: ``{"image_url": {"url"}}`` or a plain string) and ``input_image`` parts."""
    if not is_list(parts):
        return
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        url = part.get("image_url")
        if isinstance(url, Mapping):
            url = url.get("url")
        if isinstance(url, str) and url:
            yield url


def list_or_empty(value: Any) -> list[Any]:
    """``value`` if it is a list, else ``[]``."""
    return value if isinstance(value, list) else []
