"""Who is calling: :class:`UserAPIKeyAuth`, resolved from the request's headers or a user ``auth`` callable.

The presented key is hashed (SHA-256) at once and never kept or logged: hooks see ``api_key`` as the hex digest,
which is also what LiteLLM hands its hooks (``user_api_key_dict.token``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ._types import Scope


@dataclass
class UserAPIKeyAuth:
    """The caller of one request, handed to every hook of that request (the same object throughout).

    Hooks may keep request-scoped notes in ``metadata``; they are never forwarded downstream::

        UserAPIKeyAuth(user_id="u-1", team_id="t-1", rpm_limit=60)

    The fields after ``metadata`` are the ones LiteLLM's limiter hooks read; they stay ``None`` unless an
    ``auth`` callable fills them in.
    """

    api_key: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    key_alias: str | None = None
    end_user_id: str | None = None
    user_role: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    max_parallel_requests: int | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None

    @property
    def token(self) -> str | None:
        """LiteLLM's name for the hashed key."""
        return self.api_key


_HASHED: dict[str, str] = {}
_HASHED_LIMIT = 1024


def hash_key(key: str) -> str:
    """SHA-256 hex of an API key, the form in which hooks see it (``hash_key("sk-1")[:8] == "0f2c10bf"``).

    A service sees the same few keys again and again, so digests are remembered (a bounded table, reset when
    full); the table lives in process memory only, where the keys already are, and is never logged.
    """
    digest = _HASHED.get(key)
    if digest is None:
        if len(_HASHED) >= _HASHED_LIMIT:
            _HASHED.clear()
        digest = _HASHED[key] = hashlib.sha256(key.encode()).hexdigest()
    return digest


_DIGESTS: dict[tuple[bytes, bytes], str | None] = {}


def header_digest(name: bytes, value: bytes) -> str | None:
    """``hash_key`` of the key an ``Authorization``, ``api-key`` or ``x-api-key`` header presents, ``None`` if it
    presents none. Remembered per header, as :func:`hash_key` remembers digests (bounded, process memory only):
    parsing, decoding and hashing the same few headers on every request costs more than one lookup."""
    try:
        return _DIGESTS[name, value]
    except KeyError:
        pass
    except TypeError:  # not bytes (an ASGI server sends bytes): work it out, do not remember it
        return _digest(key_from_header(name, value))
    digest = _digest(key_from_header(name, value))
    if len(_DIGESTS) >= _HASHED_LIMIT:
        _DIGESTS.clear()
    _DIGESTS[name, value] = digest
    return digest


def _digest(key: bytes | None) -> str | None:
    return hash_key(key.decode("latin-1")) if key else None


def key_from_header(name: bytes, value: bytes) -> bytes | None:
    """The key an ``Authorization: Bearer …``, ``api-key`` or ``x-api-key`` header presents, if any."""
    if name == b"authorization":
        scheme, _, credentials = value.partition(b" ")
        return credentials.strip() or None if scheme.lower() == b"bearer" else None
    return value.strip() or None


def scope_user_id(scope: Scope) -> str | None:
    """The id an authentication middleware left in ``scope["user"]`` (Starlette's ``BaseUser`` or a string)."""
    user = scope.get("user")
    if user is None:
        return None
    if isinstance(user, str):
        return user or None
    if not getattr(user, "is_authenticated", False):
        return None
    for attribute in ("identity", "display_name", "username"):
        try:
            value = getattr(user, attribute)
        except (AttributeError, NotImplementedError):
            continue
        if isinstance(value, str) and value:
            return value
    return None
