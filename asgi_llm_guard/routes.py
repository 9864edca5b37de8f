"""Which paths are guarded, and as which call type (SPEC 3).

A route path is normalised before matching: lower case, empty and ``.`` segments dropped, ``..`` resolved. It then
matches a pattern when its *last* segments do, so ``/v1/chat/completions``, ``/chat/completions``,
``//V1/Chat/Completions/``, ``/api/v1/chat/completions`` (a ``Mount`` under ``/api``) and
``/openai/deployments/gpt-4o/chat/completions`` are all chat. Matching on the tail is deliberately stronger than any
router we sit in front of: a router that is case-insensitive, ignores trailing slashes or mounts the OpenAI routes
under a prefix still cannot be reached around the guard. The price is that an unrelated POST route whose path ends
in, say, ``/embeddings`` is guarded too; ``routes={"/embeddings": None}`` removes a default.

A path with ``.`` or ``..`` segments is read two ways, and it is guarded if *either* reading matches. *Literally*,
with ``.`` and ``..`` kept as segments (only empty segments dropped), is how Starlette and FastAPI route it: uvicorn
and hypercorn decode ``%2e`` and resolve no dot segments, and a ``{tenant}`` segment takes ``.`` or ``..`` as its
value, so ``POST /v1/tenants/../chat`` reaches the ``/v1/tenants/{tenant}/chat`` handler. *Resolved* as above is
how a lenient router dispatches it. Neither reading alone is as strong as every router; together they are. When
both match, the longer pattern wins, as it does within a reading (``/v1/chat/./completions`` is chat, not the
literal reading's ``/completions``; ``/openai/deployments/./chat/completions`` is chat for deployment ``"."``, not
a text completion for deployment ``"chat"``); on a tie the literal reading wins, since a path that still has dot
segments reached the app without a proxy normalising it. A path without dot segments has one reading.

Lookups are memoised per raw path (bounded), so the common case on the hot path is one dict lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ._types import CALL_TYPES

DEFAULT_ROUTES: dict[str, str] = {
    "/chat/completions": "completion",
    "/completions": "text_completion",
    "/embeddings": "embeddings",
    "/images/generations": "image_generation",
    "/moderations": "moderation",
    "/audio/transcriptions": "audio_transcription",
    "/audio/translations": "audio_transcription",
    "/responses": "responses",
    "/openai/deployments/{deployment}/chat/completions": "completion",
    "/openai/deployments/{deployment}/completions": "text_completion",
    "/openai/deployments/{deployment}/embeddings": "embeddings",
    "/openai/deployments/{deployment}/images/generations": "image_generation",
    "/openai/deployments/{deployment}/audio/transcriptions": "audio_transcription",
    "/openai/deployments/{deployment}/audio/translations": "audio_transcription",
    "/openai/responses": "responses",
}

_MEMO_LIMIT = 4096


@dataclass(frozen=True)
class RouteMatch:
    """A guarded route: its call type and the values of its ``{name}`` segments (e.g. ``deployment``)."""

    call_type: str
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    wildcard: _Node | None = None
    wildcard_name: str = ""
    call_type: str | None = None


def normalise(path: str) -> list[str]:
    """The segments of a path as a lenient router would see them: ``"//V1/./Chat//completions/"`` gives
    ``["v1", "chat", "completions"]``."""
    segments: list[str] = []
    for segment in path.lower().split("/"):
        if segment == "" or segment == ".":
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return segments


def _readings(path: str) -> list[list[str]]:
    """The segments of ``path`` as routers may read it: when it has dot segments, literally (``.`` and ``..``
    kept) and then with them resolved; otherwise the one reading."""
    literal = [segment for segment in path.lower().split("/") if segment]
    if "." not in literal and ".." not in literal:
        return [literal]
    return [literal, normalise(path)]


def _pattern_segments(pattern: str) -> list[str]:
    segments = normalise(pattern)
    if segments and segments[0] == "v1":
        # "/v1/x" and "/x" are the same pattern: every pattern matches with or without the prefix.
        segments = segments[1:]
    if not segments:
        raise ValueError(f"route pattern {pattern!r} is empty; give a path such as '/chat/completions'")
    return segments


class RouteTable:
    """Maps a route path to a :class:`RouteMatch`, or ``None`` for a path the guard leaves alone.

    ``RouteTable({"/v1/custom/{tenant}/chat": "completion"}).match("/v1/custom/acme/chat")`` is a completion
    with ``params == {"tenant": "acme"}``.
    """

    def __init__(self, overrides: Mapping[str, str | None] | None = None) -> None:
        merged: dict[tuple[str, ...], tuple[str, str]] = {}
        for pattern, default in DEFAULT_ROUTES.items():
            merged[tuple(_pattern_segments(pattern))] = (pattern, default)
        for pattern, call_type in (overrides or {}).items():
            if not isinstance(pattern, str):
                raise TypeError(
                    f"routes keys must be path strings such as '/chat/completions', not {pattern!r}"
                )
            key = tuple(_pattern_segments(pattern))
            if call_type is None:
                merged.pop(key, None)
                continue
            if call_type not in CALL_TYPES:
                raise ValueError(
                    f"routes[{pattern!r}] = {call_type!r} is not a call type; use one of {', '.join(CALL_TYPES)}"
                    " (or None to stop guarding a default route)"
                )
            merged[key] = (pattern, call_type)
        self._root = _Node()
        for key, (_pattern, call_type) in merged.items():
            node = self._root
            for segment in reversed(key):
                if segment.startswith("{") and segment.endswith("}"):
                    if node.wildcard is None:
                        node.wildcard = _Node(wildcard_name=segment[1:-1])
                    node = node.wildcard
                else:
                    node = node.children.setdefault(segment, _Node())
            node.call_type = call_type
        self._memo: dict[str, RouteMatch | None] = {}

    def match(self, path: str) -> RouteMatch | None:
        try:
            return self._memo[path]
        except KeyError:
            pass
        found, found_depth = None, -1
        for segments in _readings(path):
            match, depth = self._match_segments(segments)
            if depth > found_depth:
                found, found_depth = match, depth
        if len(self._memo) >= _MEMO_LIMIT:
            # Arbitrary paths must not grow memory without bound; a reset costs one re-normalisation each.
            self._memo.clear()
        self._memo[path] = found
        return found

    def _match_segments(self, segments: list[str]) -> tuple[RouteMatch | None, int]:
        """The longest pattern matching the tail of ``segments`` (literal segments before wildcards), and its
        length in segments (-1 for none)."""
        best: RouteMatch | None = None
        stack: list[tuple[_Node, int, dict[str, str]]] = [(self._root, len(segments), {})]
        best_depth = -1
        while stack:
            node, position, params = stack.pop()
            depth = len(segments) - position
            if node.call_type is not None and depth > best_depth:
                best, best_depth = RouteMatch(node.call_type, params), depth
            if position == 0:
                continue
            segment = segments[position - 1]
            if node.wildcard is not None:
                stack.append((node.wildcard, position - 1, {**params, node.wildcard.wildcard_name: segment}))
            child = node.children.get(segment)
            if child is not None:
                stack.append((child, position - 1, params))
        return best, best_depth
