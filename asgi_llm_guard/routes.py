"""Which paths are guarded, and as which call type (docs/reference.md#guarded-requests).

A route path is normalised before matching: lower case, empty and ``.`` segments dropped, ``..`` resolved. It then
matches a pattern when its *last* segments do, so ``/v1/chat/completions``, ``/chat/completions``,
``//V1/Chat/Completions/``, ``/api/v1/chat/completions`` (a ``Mount`` under ``/api``) and
``/openai/deployments/gpt-4o/chat/completions`` are all chat. "Lower case" is the case folding of Python's
``re.IGNORECASE``, the strongest a router commonly uses, not ``str.lower()``: it also equates ``ſ`` with ``s``,
``ı`` and ``İ`` with ``i`` and a few Greek and Cyrillic variants, so ``/v1/chat/completion%C5%BF`` is chat too (see
:func:`fold`). Matching on the tail is deliberately stronger than any
router we sit in front of: a router that is case-insensitive, ignores trailing slashes or mounts the OpenAI routes
under a prefix still cannot be reached around the guard. The price is that an unrelated POST route whose path ends
in, say, ``/embeddings`` is guarded too; ``routes={"/admin/cache/embeddings": None}`` exempts it. Matching is
case-insensitive, but the values of ``{name}`` segments keep the path's spelling: a refusal names the deployment
``GPT-4o-Prod`` as the client asked for it (docs/reference.md#route-matching).

A ``None`` in ``routes`` removes that pattern (a default, or any path) and wins over the shorter guarded patterns
*it ends with*, for the paths it matches: ``routes={"/openai/deployments/{deployment}/embeddings": None}`` lets
``/openai/deployments/ada/embeddings`` through although ``/embeddings`` matches its tail, while ``/v1/embeddings``
stays guarded, and so does ``/openai/deployments/ada/chat/completions`` (a longer pattern always wins). It covers
only patterns that are a tail of the removed one, segment for segment: removing the Azure text-completion form
``/openai/deployments/{deployment}/completions`` does not let ``/openai/deployments/chat/completions`` through,
since ``/chat/completions`` matches ``chat`` where the removed pattern only had ``{deployment}``, and a router
mounting the OpenAI routes under ``/openai/deployments`` would dispatch it to chat. So a removal lets through only
paths its own pattern matches, and gives up only the readings in which one of its own tails is the route (removing
``/chat/completions`` also stops guarding ``/v1/chat/completions`` as a ``/completions`` mounted under ``/v1/chat``).

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
    "/messages": "anthropic_messages",  # Anthropic's Messages API; /messages/count_tokens and batches stay unguarded
    "/openai/deployments/{deployment}/chat/completions": "completion",
    "/openai/deployments/{deployment}/completions": "text_completion",
    "/openai/deployments/{deployment}/embeddings": "embeddings",
    "/openai/deployments/{deployment}/images/generations": "image_generation",
    "/openai/deployments/{deployment}/audio/transcriptions": "audio_transcription",
    "/openai/deployments/{deployment}/audio/translations": "audio_transcription",
    "/openai/responses": "responses",
}

_MEMO_LIMIT = 4096

#: Characters that ``re.IGNORECASE`` equates with a character ``str.lower()`` does not give them: each maps to the
#: lower-case letter of its class. Python's ``re`` matches a character case-insensitively when its simple lower
#: case is the pattern's, or one of a few extra equivalents (``re._casefix``): ``İ`` lowers to ``i`` there (to
#: ``"i\u0307"`` in ``str.lower()``), and ``ſ`` matches ``s``, ``ı`` matches ``i``, ``µ`` matches ``μ``. A router
#: that compiles its routes with ``re.IGNORECASE`` dispatches ``/v1/chat/completion\u017f`` to chat, so the guard
#: must read it as chat too (the test suite checks this table against ``re`` for every code point).
_FOLD = {
    "\u00b5": "\u03bc",  # micro sign -> Greek mu
    "\u0130": "i",  # I with dot above (str.lower() gives "i" + combining dot)
    "\u0131": "i",  # dotless i
    "\u017f": "s",  # long s
    "\u0345": "\u03b9",  # combining ypogegrammeni -> iota
    "\u03c2": "\u03c3",  # final sigma -> sigma
    "\u03d0": "\u03b2",  # beta symbol -> beta
    "\u03d1": "\u03b8",  # theta symbol -> theta
    "\u03d5": "\u03c6",  # phi symbol -> phi
    "\u03d6": "\u03c0",  # pi symbol -> pi
    "\u03f0": "\u03ba",  # kappa symbol -> kappa
    "\u03f1": "\u03c1",  # rho symbol -> rho
    "\u03f5": "\u03b5",  # lunate epsilon -> epsilon
    "\u1c80": "\u0432",  # Cyrillic rounded ve -> ve
    "\u1c81": "\u0434",  # long-legged de -> de
    "\u1c82": "\u043e",  # narrow o -> o
    "\u1c83": "\u0441",  # wide es -> es
    "\u1c84": "\u0442",  # tall te -> te
    "\u1c85": "\u0442",  # three-legged te -> te
    "\u1c86": "\u044a",  # tall hard sign -> hard sign
    "\u1c87": "\u0463",  # tall yat -> yat
    "\u1c88": "\ua64b",  # unblended uk -> monograph uk
    "\u1e9b": "\u1e61",  # long s with dot above -> s with dot above
    "\u1fbe": "\u03b9",  # Greek prosgegrammeni -> iota
    "\u1fd3": "\u0390",  # iota with dialytika and oxia -> ... and tonos
    "\u1fe3": "\u03b0",  # upsilon with dialytika and oxia -> ... and tonos
    "\ufb06": "\ufb05",  # ligature st -> ligature long s t
}


def fold(text: str) -> str:
    """``text`` case-folded as ``re.IGNORECASE`` compares characters: ``fold("Completion\u017f") == "completions"``.
    An ASCII text costs one ``str.lower()``."""
    if text.isascii():
        return text.lower()
    # One character at a time: str.lower() on the whole text would write a final sigma as a different letter.
    return "".join([_FOLD.get(char) or char.lower() for char in text])


@dataclass(frozen=True)
class RouteMatch:
    """A guarded route: its call type and the values of its ``{name}`` segments (e.g. ``deployment``)."""

    call_type: str
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(eq=False)
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    wildcard: _Node | None = None
    call_type: str | None = None
    names: tuple[str, ...] = ()  # the pattern ending here names its {name} segments, last first
    removed: bool = False  # a pattern given as None: it ends here


def normalise(path: str) -> list[str]:
    """The segments of a path as a lenient router would see them: ``"//V1/./Chat//completions/"`` gives
    ``["v1", "chat", "completions"]``."""
    return _resolved([segment for segment in fold(path).split("/") if segment])


def _resolved(segments: list[str]) -> list[str]:
    resolved: list[str] = []
    for segment in segments:
        if segment == "..":
            if resolved:
                resolved.pop()
        elif segment != ".":
            resolved.append(segment)
    return resolved


def _readings(path: str) -> list[list[str]]:
    """The segments of ``path`` as routers may read it, spelt as in ``path`` (matching folds their case; values of
    ``{name}`` segments keep the client's spelling, docs/reference.md#route-matching): when it has dot segments,
    literally (``.`` and ``..`` kept) and then with them resolved; otherwise the one reading."""
    literal = [segment for segment in path.split("/") if segment]
    if "." not in literal and ".." not in literal:
        return [literal]
    return [literal, _resolved(literal)]


def _is_name(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def _shape(segments: list[str]) -> tuple[str, ...]:
    return tuple("{}" if _is_name(segment) else segment for segment in segments)


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
        # Keyed by shape ({name} segments alike whatever their names), so "/openai/deployments/{d}/embeddings": None
        # removes the default spelt with {deployment}. A None value stays in as a removal (see the module docstring).
        merged: dict[tuple[str, ...], tuple[list[str], str | None]] = {}
        for pattern, default in DEFAULT_ROUTES.items():
            segments = _pattern_segments(pattern)
            merged[_shape(segments)] = (segments, default)
        for pattern, call_type in (overrides or {}).items():
            if not isinstance(pattern, str):
                raise TypeError(
                    f"routes keys must be path strings such as '/chat/completions', not {pattern!r}"
                )
            if call_type is not None and call_type not in CALL_TYPES:
                raise ValueError(
                    f"routes[{pattern!r}] = {call_type!r} is not a call type; use one of {', '.join(CALL_TYPES)}"
                    " (or None to stop guarding a default route)"
                )
            segments = _pattern_segments(pattern)
            merged[_shape(segments)] = (segments, call_type)
        #: The call types some pattern guards.
        self.call_types = frozenset(call_type for _, call_type in merged.values() if call_type is not None)
        self._root = _Node()
        for segments, call_type in merged.values():
            node = self._root
            for segment in reversed(segments):
                if _is_name(segment):
                    if node.wildcard is None:
                        node.wildcard = _Node()
                    node = node.wildcard
                else:
                    node = node.children.setdefault(segment, _Node())
            # On the node, not the wildcard: patterns sharing a wildcard node may name it differently.
            node.names = tuple(segment[1:-1] for segment in reversed(segments) if _is_name(segment))
            node.call_type = call_type
            node.removed = call_type is None
        self._memo: dict[str, RouteMatch | None] = {}

    def match(self, path: str) -> RouteMatch | None:
        try:
            return self._memo[path]
        except KeyError:
            pass
        found, found_depth = None, -1
        for spelt in _readings(path):
            match, depth = self._match_segments([fold(segment) for segment in spelt], spelt)
            if depth > found_depth:
                found, found_depth = match, depth
        if len(self._memo) >= _MEMO_LIMIT:
            # Arbitrary paths must not grow memory without bound; a reset costs one re-normalisation each.
            self._memo.clear()
        self._memo[path] = found
        return found

    def _match_segments(self, segments: list[str], spelt: list[str]) -> tuple[RouteMatch | None, int]:
        """The longest guarded pattern matching the tail of ``segments`` (literal segments before wildcards) that
        no matching removal ends with, and its length in segments (-1 for none). ``spelt`` is ``segments`` as the
        path spells them, for the values of ``{name}`` segments."""
        found: list[tuple[int, _Node, str, tuple[str, ...]]] = []
        covered: set[_Node] = set()
        # Each entry carries the values of the {name} segments so far (last first), and the guarded patterns on its
        # way from the root: the ones a removal ending here ends with.
        stack: list[tuple[_Node, int, tuple[str, ...], tuple[_Node, ...]]] = [(self._root, len(segments), (), ())]
        while stack:
            node, position, values, guarded_tails = stack.pop()
            if node.call_type is not None:
                found.append((len(segments) - position, node, node.call_type, values))
                guarded_tails = (*guarded_tails, node)
            elif node.removed:
                covered.update(guarded_tails)
            if position == 0:
                continue
            segment = segments[position - 1]
            if node.wildcard is not None:
                stack.append((node.wildcard, position - 1, (*values, spelt[position - 1]), guarded_tails))
            child = node.children.get(segment)
            if child is not None:
                stack.append((child, position - 1, values, guarded_tails))
        best: RouteMatch | None = None
        best_depth = -1
        for depth, node, call_type, values in found:
            if depth > best_depth and node not in covered:
                best, best_depth = RouteMatch(call_type, dict(zip(node.names, values, strict=True))), depth
        return best, best_depth
