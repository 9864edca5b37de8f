"""Answers the middleware writes itself, refusals and errors (docs/reference.md#refusals, #errors), as status, headers
and body.

The request's wire format (``formats``) writes the bodies; this module adds the status and the headers: the
content type, ``content-length``, ``x-llm-guard-rejected`` and an exception's own headers (``Retry-After``), kept
to what HTTP allows. Every string in a body goes through orjson, so a message holding ``"\\n\\ndata: "`` stays
inside its JSON string and cannot inject SSE frames; header values are never built from messages.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import orjson

from .errors import GuardError
from .formats import RequestedFormat, WireFormat

logger = logging.getLogger("asgi_llm_guard")

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def _encode_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """An exception's headers as ASGI headers, keeping only what HTTP allows (RFC 9110 5.1, 5.5): a name that is
    a token, a value of visible characters, spaces and tabs. Anything else (``"1\r\nX-Injected: yes"``, other
    control characters, text beyond latin-1) is dropped with a warning, so a hook cannot split the response or
    make the server refuse it."""
    encoded = []
    for name, value in headers.items():
        name, value = str(name).strip(), str(value).strip()
        if _TOKEN.fullmatch(name) and _FIELD_VALUE.fullmatch(value):  # both only admit latin-1 code points
            encoded.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        else:
            logger.warning("dropped response header %r: HTTP headers cannot carry it", name[:40])
    return encoded


#: An answer the middleware writes itself: status, headers (with ``content-length``), body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


def answer(status: int, body: bytes, base: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]) -> Answer:
    return status, [*base, (b"content-length", str(len(body)).encode()), *extra], body


def error_answer(error: GuardError, wire: WireFormat, rejected_stage: str | None = None) -> Answer:
    """The JSON error of docs/reference.md#errors in the request's wire format, with the error's own headers
    (``Retry-After``)."""
    extra = _encode_headers(error.headers) if error.headers else []
    if rejected_stage:
        extra.append((b"x-llm-guard-rejected", rejected_stage.encode()))
    if error.status_code in _NO_BODY:  # a hook raised HTTPException(204) or (304): HTTP allows no body at all
        return error.status_code, extra, b""
    return answer(error.status_code, wire.error_body(error), _JSON_HEADERS, extra)


_NO_BODY = frozenset({204, 304})


def refusal_answer(message: str, wire: WireFormat, requested: RequestedFormat, model: str, stage: str) -> Answer:
    """``message`` as the answer the client's request asked for (docs/reference.md#refusals); a 400 error where a
    refusal cannot be an answer (embeddings, images, ...)."""
    if not wire.refusal_is_answer:
        return error_answer(GuardError(400, message), wire, stage)
    rejected = [(b"x-llm-guard-rejected", stage.encode())]
    if requested.stream:
        return answer(200, wire.refusal_events(message, model, requested), _SSE_HEADERS, rejected)
    return answer(200, orjson.dumps(wire.refusal_json(message, model)), _JSON_HEADERS, rejected)
