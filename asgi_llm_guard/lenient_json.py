"""JSON as Python's ``json`` module writes it: the fallback for response bodies orjson refuses.

``json.dumps`` writes ``NaN``, ``Infinity`` and ``-Infinity`` (a ``-inf`` logprob is common), and the ``openai`` SDK
reads them back with ``json.loads``; orjson refuses them, as the JSON RFC does. A response a hook must see is never
let through unread because of that (docs/reference.md#unreadable-responses), so the few bodies orjson
refuses are read here and written back the same way, with the app's own ``NaN``/``Infinity`` kept. orjson stays
the parser on the hot path: this module is only tried after it failed.
"""

from __future__ import annotations

import json
from typing import Any

BOM = b"\xef\xbb\xbf"


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Parse what orjson refused; raises ``ValueError`` when Python's ``json`` cannot read it either.

    A leading UTF-8 BOM is skipped (a body may start with one); the text must be UTF-8."""
    raw = bytes(data)
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    return json.loads(raw.decode("utf-8"))


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON that ``json.loads`` (the ``openai`` SDK) reads back to the same values, NaN and
    infinities included. Non-ASCII is escaped, so a lone surrogate the app sent is written back as it came.

    Raises ``TypeError`` for a value JSON cannot hold, as ``orjson.dumps`` does."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=True).encode()
    except ValueError as exc:  # a circular reference
        raise TypeError(str(exc)) from exc
