"""Who is calling: :class:`UserAPIKeyAuth`, resolved from the request's headers or a user ``auth`` callable.

The presented key is hashed (SHA-256) at once and never kept or logged: hooks see ``api_key`` as the hex digest,
which is also what LiteLLM hands its hooks (``user_api_key_dict.token``).
"""

from __future__ import annotations

import hashlib
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from ._types import Scope


@dataclass(init=False)
class UserAPIKeyAuth:
    """The caller of one request, handed to every hook of that request (the same object throughout).

    Hooks may keep request-scoped notes in ``metadata``; they are never forwarded downstream::

        UserAPIKeyAuth(user_id="u-1", team_id="t-1", rpm_limit=60)

    The fields after ``metadata`` are the ones LiteLLM's hooks read (limits, budgets, permissions, allowed cache
    controls, team and user fields), defaulted as LiteLLM defaults them; they stay so unless an ``auth`` callable
    fills them in (it may also return LiteLLM's own ``UserAPIKeyAuth``, see docs/litellm.md).
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
    # The fields LiteLLM's own hooks and guardrails read (its ``UserAPIKeyAuth`` has the same names and defaults),
    # so a hook written for the LiteLLM proxy finds them here; see docs/litellm.md. They are keyword-only and cost
    # nothing per request unless given: the None ones are class attributes, and the list and dict ones are made on
    # first use (``__getattr__``), since the middleware builds one identity for every guarded request.
    key_name: str | None = None
    team_alias: str | None = None
    team_metadata: dict[str, Any] | None = None
    org_id: str | None = None
    project_id: str | None = None
    agent_id: str | None = None
    user_email: str | None = None
    models: list[str] = field(default_factory=list)
    spend: float = 0.0
    max_budget: float | None = None
    team_max_budget: float | None = None
    model_max_budget: dict[str, Any] = field(default_factory=dict)
    allowed_cache_controls: list[str] = field(default_factory=list)
    permissions: dict[str, Any] = field(default_factory=dict)
    tpd_limit: int | None = None
    user_tpm_limit: int | None = None
    user_rpm_limit: int | None = None
    team_tpm_limit: int | None = None
    team_rpm_limit: int | None = None
    team_tpd_limit: int | None = None
    team_member_tpm_limit: int | None = None
    team_member_rpm_limit: int | None = None
    end_user_tpm_limit: int | None = None
    end_user_rpm_limit: int | None = None
    end_user_tpd_limit: int | None = None
    organization_tpm_limit: int | None = None
    organization_rpm_limit: int | None = None
    rpm_limit_per_model: dict[str, int] | None = None
    tpm_limit_per_model: dict[str, int] | None = None
    budget_throttle_pct: float | None = None
    budget_reservation: Any = None
    parent_otel_span: Any = None
    request_route: str | None = None
    is_session_token: bool = False

    def __init__(
        self,
        api_key: str | None = None,
        user_id: str | None = None,
        team_id: str | None = None,
        key_alias: str | None = None,
        end_user_id: str | None = None,
        user_role: str | None = None,
        metadata: dict[str, Any] | None = None,
        max_parallel_requests: int | None = None,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
        **litellm_fields: Any,
    ) -> None:
        self.api_key = api_key
        self.user_id = user_id
        self.team_id = team_id
        self.key_alias = key_alias
        self.end_user_id = end_user_id
        self.user_role = user_role
        self.metadata = {} if metadata is None else metadata
        self.max_parallel_requests = max_parallel_requests
        self.rpm_limit = rpm_limit
        self.tpm_limit = tpm_limit
        if litellm_fields:
            for name, value in litellm_fields.items():
                if name not in _EXTRA_FIELDS:
                    raise TypeError(f"UserAPIKeyAuth() got an unexpected keyword argument {name!r}")
                setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only reached for an attribute the instance lacks: a list or dict field not given, made once on first use.
        factory = _LAZY_FIELDS.get(name)
        if factory is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value = self.__dict__[name] = factory()
        return value

    @property
    def token(self) -> str | None:
        """LiteLLM's name for the hashed key."""
        return self.api_key


_CORE_FIELDS = frozenset(
    (
        "api_key", "user_id", "team_id", "key_alias", "end_user_id", "user_role", "metadata",
        "max_parallel_requests", "rpm_limit", "tpm_limit",
    )
)
_EXTRA_FIELDS = frozenset(f.name for f in fields(UserAPIKeyAuth)) - _CORE_FIELDS
_LAZY_FIELDS: dict[str, Any] = {
    f.name: f.default_factory for f in fields(UserAPIKeyAuth) if f.default_factory is not MISSING
}
_LAZY_FIELDS.pop("metadata")

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
