"""A guardrail that refuses or masks text matching regular expressions.

It is a :class:`~asgi_llm_guard.CustomGuardrail` (``docs/guardrails.md``): by default ``pre_call`` and on for
every request, so it reads every text of the request (all chat roles, content parts, prompts, embeddings and
moderation input, Responses API input, Anthropic messages and system) and the arguments of tool calls, and a
denied word cannot slip through in a system message or a tool result. Given ``event_hook=["pre_call",
"post_call"]`` it checks answers too, streamed ones included (masked in the stream, or the stream ended with the
refusal).

``pre_call`` is the default on purpose: masking must happen before the request is forwarded, and a
``during_call`` guardrail runs while the downstream app already has the request. For a reject-only guard that
also should not cost the downstream a token, the pre-call stage is the cheaper place too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from .._types import CALL_TYPES
from ..errors import RejectRequest
from ..guardrails import CustomGuardrail
from ..text import request_texts, rewrite_request_texts

__all__ = ["PromptPatternGuard"]

_CALL_TYPES = frozenset(CALL_TYPES)

PatternLike = str | re.Pattern[str]


class PromptPatternGuard(CustomGuardrail):
    """Refuse (``action="reject"``) or mask (``action="mask"``) request text matching any ``deny`` pattern.

    ``allow`` patterns carve out exceptions: the spans of text they match are invisible to the ``deny``
    patterns, so with ``deny=[r"forbidden"], allow=[r"forbidden fruit"]`` the prompt "the forbidden fruit"
    passes and "forbidden" alone does not. String patterns are compiled once, with ``flags`` (case-insensitive
    by default); compiled patterns are used with their own flags. A deny pattern that matches the empty string
    would match every request and is refused at construction; zero-width matches (lookaheads) still refuse,
    but there is nothing for a mask to replace.

    The refusal ``message`` never quotes the matched text (the client's own prompt may be logged or shown
    elsewhere). ``call_types`` restricts the call types checked (default: all)::

        app.add_middleware(LLMHookMiddleware, hooks=[PromptPatternGuard(deny=[r"\\bforbidden\\b"])])
        PromptPatternGuard(deny=[r"\\b\\d{16}\\b"], action="mask", mask="[card]")
    """

    def __init__(
        self,
        deny: Iterable[PatternLike] | PatternLike,
        *,
        allow: Iterable[PatternLike] | PatternLike = (),
        action: Literal["reject", "mask"] = "reject",
        message: str = "Your request was blocked by a content policy.",
        mask: str = "[REDACTED]",
        flags: int | re.RegexFlag = re.IGNORECASE,
        call_types: Iterable[str] | str | None = None,
        guardrail_name: str | None = None,
        event_hook: Any = "pre_call",
        default_on: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(guardrail_name=guardrail_name, event_hook=event_hook, default_on=default_on, **kwargs)
        if isinstance(flags, bool) or not isinstance(flags, int):
            raise TypeError(f"flags must be re flags such as re.IGNORECASE, not {type(flags).__name__}")
        self.deny = _compile_all(deny, "deny", int(flags))
        self.allow = _compile_all(allow, "allow", int(flags))
        if not self.deny:
            raise ValueError("deny needs at least one pattern, e.g. deny=[r'\\bforbidden\\b']")
        for pattern in self.deny:
            if pattern.fullmatch("") is not None:
                raise ValueError(
                    f"deny pattern {pattern.pattern!r} matches the empty string, so it would match every "
                    "request; make it match at least one character"
                )
        if action not in ("reject", "mask"):
            raise ValueError(f"action must be 'reject' or 'mask', not {action!r}")
        if not isinstance(message, str) or not message:
            raise TypeError("message must be a non-empty str: the refusal text the client receives")
        if not isinstance(mask, str):
            raise TypeError(f"mask must be a str such as '[REDACTED]', not {type(mask).__name__}")
        self.action = action
        self.message = message
        self.mask = mask
        self.call_types = _call_types(call_types)

    async def apply_guardrail(
        self, inputs: dict[str, Any], request_data: Any, input_type: str, logging_obj: Any = None
    ) -> dict[str, Any] | None:
        """Raise :class:`RejectRequest` (reject) or return the texts masked (mask); tool-call arguments in
        ``inputs["tool_calls"]`` are checked, and masked in place, too."""
        texts: list[str] = inputs.get("texts", [])
        arguments = list(_argument_slots(inputs.get("tool_calls")))
        if self.action == "reject":
            if any(self.matches(text) for text in texts) or any(self.matches(c[k]) for c, k in arguments):
                raise RejectRequest(self.message)
            return None
        for container, key in arguments:
            container[key] = self.redact(container[key])
        return {**inputs, "texts": [self.redact(text) for text in texts]}

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> None:
        """Raise :class:`RejectRequest` (reject) or mask ``data`` in place (mask); ``None`` keeps ``data``. (The
        middleware calls :meth:`apply_guardrail`; this is the same check as a LiteLLM pre-call hook.)"""
        if self.call_types is not None and call_type not in self.call_types:
            return None
        if self.action == "mask":
            rewrite_request_texts(data, call_type, self.redact)
            return None
        if any(self.matches(text) for text in request_texts(data, call_type)):
            raise RejectRequest(self.message)
        return None

    def matches(self, text: str) -> bool:
        """Whether a deny pattern matches outside the allowed spans: ``guard.matches("forbidden")``."""
        for start, end in self._gaps(text):
            for pattern in self.deny:
                if pattern.search(text, start, end) is not None:
                    return True
        return False

    def redact(self, text: str) -> str:
        """``text`` with each denied match (outside the allowed spans) replaced by ``mask``."""
        spans: list[tuple[int, int]] = []
        for start, end in self._gaps(text):
            for pattern in self.deny:
                spans.extend(m.span() for m in pattern.finditer(text, start, end) if m.end() > m.start())
        if not spans:
            return text
        pieces: list[str] = []
        position = 0
        for start, end in _merged(spans):
            pieces.append(text[position:start])
            pieces.append(self.mask)
            position = end
        pieces.append(text[position:])
        return "".join(pieces)

    def _gaps(self, text: str) -> list[tuple[int, int]]:
        # The stretches of text between allowed spans. Searching a stretch with pos/endpos keeps the real left
        # context (lookbehinds, \b) while an allowed span to the right reads as the end of the text.
        if not self.allow:
            return [(0, len(text))]
        allowed = [m.span() for pattern in self.allow for m in pattern.finditer(text) if m.end() > m.start()]
        gaps: list[tuple[int, int]] = []
        position = 0
        for start, end in _merged(allowed):
            if start > position:
                gaps.append((position, start))
            position = end
        if position < len(text):
            gaps.append((position, len(text)))
        return gaps

    def __repr__(self) -> str:
        deny = [p.pattern for p in self.deny]
        return f"{type(self).__name__}(deny={deny!r}, action={self.action!r}, event_hook={self.event_hook!r})"


def _argument_slots(tool_calls: Any) -> Iterable[tuple[Any, str]]:
    """The string arguments of tool calls as the formats spell them: chat's ``function.arguments``, the
    Responses API's ``arguments``; Anthropic's ``tool_use`` input is an object, checked as JSON is not."""
    if not isinstance(tool_calls, list):
        return
    for call in tool_calls:
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            yield function, "arguments"
        elif isinstance(call.get("arguments"), str):
            yield call, "arguments"


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _compile_all(
    patterns: Iterable[PatternLike] | PatternLike, name: str, flags: int
) -> list[re.Pattern[str]]:
    if isinstance(patterns, (str, re.Pattern)):
        patterns = [patterns]
    elif isinstance(patterns, (bytes, Mapping)) or not isinstance(patterns, Iterable):
        raise TypeError(
            f"{name} must be a list of regex strings or compiled patterns, not {type(patterns).__name__}"
        )
    compiled: list[re.Pattern[str]] = []
    for pattern in patterns:
        if isinstance(pattern, re.Pattern):
            if not isinstance(pattern.pattern, str):
                raise TypeError(f"{name} pattern {pattern.pattern!r} is bytes; compile it from a str")
            compiled.append(pattern)
        elif isinstance(pattern, str):
            try:
                compiled.append(re.compile(pattern, flags))
            except re.error as exc:
                raise ValueError(f"{name} pattern {pattern!r} is not a valid regex: {exc}") from exc
        else:
            raise TypeError(
                f"{name} patterns must be str or re.Pattern, got {type(pattern).__name__}: {pattern!r}"
            )
    return compiled


def _call_types(call_types: Iterable[str] | str | None) -> frozenset[str] | None:
    if call_types is None:
        return None
    if isinstance(call_types, str):
        call_types = [call_types]
    elif not isinstance(call_types, Iterable):
        raise TypeError(f"call_types must be a set of call type names, not {type(call_types).__name__}")
    names = frozenset(call_types)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"call_types entries must be str, got {type(name).__name__}")
    unknown = names - _CALL_TYPES
    if unknown:
        raise ValueError(f"unknown call types {sorted(unknown)}; choose from {sorted(_CALL_TYPES)}")
    return names
