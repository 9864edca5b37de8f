"""The head of a guarded request: which requests count as a POST, and one pass over the headers.

The guard reads the API key, the body's content type and length and its encoding, and forwards every other header
as it came after one dict lookup; ``content-type`` and ``content-length`` are set again for the re-serialised body
the app receives, and ``accept-encoding`` is dropped when a hook reads responses (it must read them uncompressed).
"""

from __future__ import annotations

from ._types import Scope
from .auth import header_digest
from .bodies import too_large
from .errors import GuardError
from .routes import fold

_KEY_HEADERS = {b"authorization": 0, b"api-key": 1, b"x-api-key": 2}  # where a key may be, in precedence order
_KEY, _CONTENT_TYPE, _CONTENT_LENGTH, _CONTENT_ENCODING, _TRANSFER_ENCODING, _ACCEPT_ENCODING = range(6)
#: The request headers the guard reads or replaces; every other header is forwarded after one lookup.
_SPECIAL_HEADERS = {
    **dict.fromkeys(_KEY_HEADERS, _KEY),
    b"content-type": _CONTENT_TYPE,
    b"content-length": _CONTENT_LENGTH,
    b"content-encoding": _CONTENT_ENCODING,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"accept-encoding": _ACCEPT_ENCODING,
}


#: What :func:`scan_headers` finds: the headers the app gets (content-type and content-length still to add), the
#: body's content type, the SHA-256 of the API key from the header that takes precedence, and what the headers
#: already say is wrong (a body over the limit, an encoding). A plain tuple: this runs on every guarded request.
RequestHeaders = tuple[list[tuple[bytes, bytes]], bytes, str | None, GuardError | None]


def scan_headers(
    headers: list[tuple[bytes, bytes]], limit: int, drop_accept_encoding: bool
) -> RequestHeaders:
    """One pass over the request headers: what the guard needs from them, and the ones the app gets."""
    forwarded = []
    content_type = b""
    key: str | None = None  # its digest
    key_rank = len(_KEY_HEADERS)
    error: GuardError | None = None
    special = _SPECIAL_HEADERS
    for header in headers:
        kind = special.get(header[0])
        if kind is None:  # most headers: one lookup, forwarded as they are
            forwarded.append(header)
            continue
        name, value = header
        if kind == _KEY:
            rank = _KEY_HEADERS[name]
            found = header_digest(name, value)
            if found and rank < key_rank:  # Bearer, then api-key, then x-api-key, whatever their order
                key, key_rank = found, rank
            forwarded.append(header)
        elif kind == _CONTENT_TYPE:
            content_type = value
        elif kind == _CONTENT_LENGTH:
            if not value.strip().isdigit():
                error = error or GuardError(400, "The Content-Length header is not a number.")
            elif int(value) > limit:
                error = error or too_large(limit)
        elif kind == _CONTENT_ENCODING:
            if value.strip().lower() not in (b"", b"identity"):
                error = GuardError(
                    415,
                    f"Content-Encoding {value.decode('latin-1')!r} is not supported; send the body uncompressed.",
                )
        elif kind == _ACCEPT_ENCODING:
            if not drop_accept_encoding:
                forwarded.append(header)
        # transfer-encoding: the body the app gets has a content-length instead
    return forwarded, content_type, key, error


_METHOD_OVERRIDES = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})


def says_post(method: str) -> bool:
    """Whether a framework could take ``method`` for POST: servers pass the method as the client wrote it
    (uvicorn with h11 passes ``post``), and frameworks upper-case it (Django) or compare it as ``re.IGNORECASE``
    does, where ``poſt`` is POST too; surrounding white space is stripped the way ``str.strip()`` does."""
    method = method.strip()
    return method.upper() == "POST" or fold(method) == "post"


def treated_as_post(scope: Scope) -> bool:
    """A request that is not a plain ``POST`` but that the app may still handle as one is guarded as one: a POST
    spelt in another case, or a GET (say) that asks a method-override middleware downstream to treat it as a POST
    (otherwise ``X-HTTP-Method-Override: POST`` would walk around the guard). An override to any other method
    passes through, as a request made with that method does (only POST is guarded: docs/reference.md#guarded-requests).
    Only requests on a guarded path get here."""
    if says_post(scope["method"]):
        return True
    for name, value in scope["headers"]:
        if name in _METHOD_OVERRIDES and (
            # as the override middleware may decode it: latin-1 (ASGI's own), UTF-8 dropping what it cannot read
            says_post(value.decode("latin-1")) or says_post(value.decode("utf-8", "ignore"))
        ):
            return True
    return False
