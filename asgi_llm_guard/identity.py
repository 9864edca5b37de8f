"""Who a request is from, when the service names it with an ``auth`` callable (docs/reference.md#identity): the
callable's answer as a :class:`UserAPIKeyAuth` (a LiteLLM ``user_api_key_auth`` answer is converted), or the
error the client gets when it fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ._types import Scope
from .auth import UserAPIKeyAuth
from .call import CallState
from .errors import (
    DEPENDENCY_FAILED,
    GuardError,
    Halt,
    dependency_status,
    from_exception,
    is_dependency_error,
    log_exception,
)
from .hooks import HOOK_ERRORS
from .litellm_adapter import from_litellm_identity, is_litellm_identity

logger = logging.getLogger("asgi_llm_guard")

AuthCallable = Callable[[Scope], Awaitable[UserAPIKeyAuth]]


async def authenticate(auth: AuthCallable, scope: Scope, call: CallState, expose: bool) -> UserAPIKeyAuth:
    """What ``auth`` says of ``scope``; :class:`Halt` with the client's error when it raises or answers nonsense."""
    try:
        user = await auth(scope)
    except HOOK_ERRORS as exc:
        if isinstance(exc, asyncio.CancelledError) and call.cancelled():
            raise
        error = from_exception(exc)
        if error is None and is_dependency_error(exc):  # the key store it called failed, not the client's key
            what = f"the auth callable (a call it made{dependency_status(exc)})"
            log_exception(what, exc, expose=True)  # the operator's to fix: docs/reference.md#privacy
            error = GuardError(502, f"Authentication failed: {DEPENDENCY_FAILED}.")
        elif error is None:
            log_exception("the auth callable", exc, expose=expose)
            error = GuardError(500, "Authentication failed.")
        raise Halt(error, exc) from None
    if not isinstance(user, UserAPIKeyAuth) and is_litellm_identity(user):
        user = from_litellm_identity(user)  # what a LiteLLM user_api_key_auth returns (docs/litellm.md)
    if not isinstance(user, UserAPIKeyAuth):
        error = GuardError(500, "Authentication failed.")
        logger.error("the auth callable returned %s, not a UserAPIKeyAuth", type(user).__name__)
        raise Halt(error, TypeError(error.message))
    return user
