"""The user-visible text of an OpenAI request, for hooks that read it (filters, moderation) or rewrite it.

One walker finds every place a request keeps text, whatever its call type (SPEC 2); :func:`request_texts`
reads those places and :func:`rewrite_request_texts` writes back into the very same ones, so a mask can never
miss a text that a check saw. Odd shapes (a number where a string belongs, a part without ``text``) are
skipped, never raised on: the downstream service, not a guard, decides whether a body is valid.

Where we differ from LiteLLM: its ``get_formatted_prompt`` concatenates chat contents with no separator and
reads only ``"text"`` parts and tool-call arguments; ours joins with ``"\\n"`` (so words of adjacent messages
do not run together for a regex) and also reads refusals, the legacy ``function_call``, ``"input_text"`` /
``"output_text"`` parts and the Responses API's ``instructions`` and ``input`` items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping, MutableSequence
from typing import Any, TypeGuard

__all__ = ["get_formatted_prompt", "request_texts", "rewrite_request_texts"]

# A place that holds a text: ``container[key]`` is a non-empty ``str``.
_Slot = tuple[Any, Any]

# Content part types whose "text" is text (chat, Responses API, moderation input). A part with no "type" but a
# string "text" is read too: a lenient downstream may accept it, so a guard must not be blind to it.
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})


def request_texts(data: Mapping[str, Any], call_type: str) -> list[str]:
    """Every user-visible text of a request, in request order (empty strings are left out).

    ``call_type`` is one of SPEC 2's call types; for an unknown one, every field any call type reads is read
    (``messages``, ``instructions``, ``prompt``, ``input``)::

        >>> request_texts({"messages": [{"role": "user", "content": "Hi"}]}, "completion")
        ['Hi']
        >>> request_texts({"input": ["a", [1, 2], "b"]}, "embeddings")
        ['a', 'b']
    """
    return [container[key] for container, key in _slots(data, call_type)]


def get_formatted_prompt(data: Mapping[str, Any], call_type: str) -> str:
    """The request's texts joined with ``"\\n"``; a drop-in for ``litellm.utils.get_formatted_prompt``.

    ::

        formatted_prompt = get_formatted_prompt(data=data, call_type=call_type)
        if "Hello world" in formatted_prompt:
            return "This is an invalid response"
    """
    return "\n".join(request_texts(data, call_type))


def rewrite_request_texts(data: MutableMapping[str, Any], call_type: str, fn: Callable[[str], str]) -> bool:
    """Replace each text :func:`request_texts` returns by ``fn(text)``, in place; ``True`` if any changed.

    Texts inside immutable containers (tuples: never the case for a parsed JSON body) are left as they are::

        data = {"messages": [{"role": "user", "content": "my card is 4111 1111 1111 1111"}]}
        rewrite_request_texts(data, "completion", lambda text: CARD.sub("[card]", text))
    """
    changed = False
    for container, key in list(_slots(data, call_type)):
        if not isinstance(container, (MutableMapping, MutableSequence)):
            continue
        old = container[key]
        new = fn(old)
        if new != old:
            container[key] = new
            changed = True
    return changed


def _slots(data: Mapping[str, Any], call_type: str) -> Iterator[_Slot]:
    if not isinstance(data, Mapping):
        return
    if call_type == "completion":
        yield from _message_list_slots(data.get("messages"))
    elif call_type in ("text_completion", "image_generation", "audio_transcription"):
        yield from _prompt_slots(data)
    elif call_type in ("embeddings", "moderation"):
        yield from _input_slots(data)
    elif call_type == "responses":
        yield from _str_slot(data, "instructions")
        yield from _input_slots(data)
    else:
        yield from _message_list_slots(data.get("messages"))
        yield from _str_slot(data, "instructions")
        yield from _prompt_slots(data)
        yield from _input_slots(data)


def _str_slot(container: Any, key: Any) -> Iterator[_Slot]:
    if isinstance(container, Mapping):
        value = container.get(key)
    elif _is_list(container) and isinstance(key, int) and 0 <= key < len(container):
        value = container[key]
    else:
        return
    if isinstance(value, str) and value:
        yield container, key


def _is_list(value: Any) -> TypeGuard[list[Any] | tuple[Any, ...]]:
    return isinstance(value, (list, tuple))


def _prompt_slots(data: Mapping[str, Any]) -> Iterator[_Slot]:
    # text_completion: str or list of str; token-id lists (list of int, list of lists of int) are skipped.
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        yield from _str_slot(data, "prompt")
    elif _is_list(prompt):
        for index in range(len(prompt)):
            yield from _str_slot(prompt, index)


def _input_slots(data: Mapping[str, Any]) -> Iterator[_Slot]:
    # Embeddings (str, list of str, token ids), moderation (also text/image parts) and Responses API input
    # (str or items) share the key "input"; one reader covers all, skipping what is not text.
    value = data.get("input")
    if isinstance(value, str):
        yield from _str_slot(data, "input")
        return
    if not _is_list(value):
        return
    for index, item in enumerate(value):
        if isinstance(item, str):
            yield from _str_slot(value, index)
        elif isinstance(item, Mapping):
            yield from _input_item_slots(item)


def _input_item_slots(item: Mapping[str, Any]) -> Iterator[_Slot]:
    kind = item.get("type")
    if kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, str):
            yield from _str_slot(item, "output")
        else:
            yield from _parts_slots(output)
    elif kind in ("function_call", "custom_tool_call"):
        yield from _str_slot(item, "arguments")
        yield from _str_slot(item, "input")
    elif kind == "message" or "role" in item or "content" in item:
        yield from _message_slots(item)
    else:
        yield from _part_slots(item)


def _message_list_slots(messages: Any) -> Iterator[_Slot]:
    if not _is_list(messages):
        return
    for message in messages:
        if isinstance(message, Mapping):
            yield from _message_slots(message)


def _message_slots(message: Mapping[str, Any]) -> Iterator[_Slot]:
    content = message.get("content")
    if isinstance(content, str):
        yield from _str_slot(message, "content")
    else:
        yield from _parts_slots(content)
    yield from _str_slot(message, "refusal")
    tool_calls = message.get("tool_calls")
    if _is_list(tool_calls):
        for call in tool_calls:
            if isinstance(call, Mapping):
                yield from _str_slot(call.get("function"), "arguments")
    yield from _str_slot(message.get("function_call"), "arguments")


def _parts_slots(parts: Any) -> Iterator[_Slot]:
    if not _is_list(parts):
        return
    for index, part in enumerate(parts):
        if isinstance(part, str):
            yield from _str_slot(parts, index)
        elif isinstance(part, Mapping):
            yield from _part_slots(part)


def _part_slots(part: Mapping[str, Any]) -> Iterator[_Slot]:
    kind = part.get("type")
    if kind in _TEXT_PART_TYPES or (kind is None and "text" in part):
        yield from _str_slot(part, "text")
    elif kind == "refusal":
        yield from _str_slot(part, "refusal")
