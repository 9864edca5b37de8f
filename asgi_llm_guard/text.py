"""The user-visible text of a request, for hooks that read it (filters, moderation) or rewrite it.

Each wire format knows where its requests keep text (``formats``, :meth:`WireFormat.request_text_slots`);
:func:`request_texts` reads those places and :func:`rewrite_request_texts` writes back into the very same ones, so
a mask can never miss a text that a check saw. Odd shapes (a number where a string belongs, a part without
``text``) are skipped, never raised on: the downstream service, not a guard, decides whether a body is valid.

Where we differ from LiteLLM: its ``get_formatted_prompt`` concatenates chat contents with no separator and
reads only ``"text"`` parts and tool-call arguments; ours joins with ``"\\n"`` (so words of adjacent messages
do not run together for a regex) and also reads refusals, the legacy ``function_call``, ``"input_text"`` /
``"output_text"`` parts, the Responses API's ``instructions`` and ``input`` items, and Anthropic's ``system``
and content blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping, MutableSequence
from typing import Any

from .formats import FORMATS, TextSlot
from .formats._walk import input_slots, message_list_slots, prompt_slots, str_slot

__all__ = ["get_formatted_prompt", "request_texts", "rewrite_request_texts"]


def request_texts(data: Mapping[str, Any], call_type: str) -> list[str]:
    """Every user-visible text of a request, in request order (empty strings are left out).

    ``call_type`` is one of the call types of docs/reference.md#hooks; for an unknown one, every field an OpenAI call
    type reads is read (``messages``, ``instructions``, ``prompt``, ``input``)::

        >>> request_texts({"messages": [{"role": "user", "content": "Hi"}]}, "completion")
        ['Hi']
        >>> request_texts({"input": ["a", [1, 2], "b"]}, "embeddings")
        ['a', 'b']
    """
    return [slot.get() for slot in _slots(data, call_type)]


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
    for slot in _slots(data, call_type):
        if not isinstance(slot.container, (MutableMapping, MutableSequence)):
            continue
        old = slot.get()
        new = fn(old)
        if new != old:
            slot.set(new)
            changed = True
    return changed


def _slots(data: Mapping[str, Any], call_type: str) -> list[TextSlot]:
    if not isinstance(data, Mapping):
        return []
    wire = FORMATS.get(call_type)
    if wire is not None:
        return wire.request_text_slots(data)
    return list(_every_field(data))


def _every_field(data: Mapping[str, Any]) -> Iterator[TextSlot]:
    yield from message_list_slots(data.get("messages"))
    yield from str_slot(data, "instructions")
    yield from prompt_slots(data)
    yield from input_slots(data)
