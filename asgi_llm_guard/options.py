"""The middleware's options, checked at construction so a mistake fails at start-up, not at the first request
(docs/reference.md#construction): each message says what to pass instead."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .cache import DualCache
from .observe import Observer


def check_options(
    *,
    hooks: Any,
    enforce_user_param: Any,
    routes: Any,
    max_body_bytes: Any,
    auth: Any,
    cache: Any,
    hook_timeout: Any,
    moderation: Any,
    expose_hook_errors: Any,
    observer: Any,
) -> None:
    """Raise ``TypeError`` or ``ValueError`` for an option of the wrong type or value."""
    if isinstance(hooks, (str, bytes)) or not isinstance(hooks, Iterable):
        raise TypeError(
            f"hooks must be a list of hook objects or import strings, e.g. hooks=[MyHook()], "
            f"not {hooks!r}"
        )
    for name, flag in (
        ("enforce_user_param", enforce_user_param),
        ("expose_hook_errors", expose_hook_errors),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, not {flag!r}")
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes <= 0:
        raise TypeError(f"max_body_bytes must be a positive int (bytes), not {max_body_bytes!r}")
    if hook_timeout is not None and (
        isinstance(hook_timeout, bool) or not isinstance(hook_timeout, (int, float)) or hook_timeout <= 0
    ):
        raise TypeError(
            f"hook_timeout must be a positive number of seconds or None, not {hook_timeout!r}"
        )
    if auth is not None and not callable(auth):
        raise TypeError(f"auth must be an async callable (scope) -> UserAPIKeyAuth, not {auth!r}")
    if cache is not None and not isinstance(cache, DualCache):
        raise TypeError(f"cache must be a DualCache, e.g. cache=DualCache(redis_url=...), not {cache!r}")
    if not isinstance(moderation, str):
        raise TypeError(f"moderation must be 'parallel' or 'before', not {moderation!r}")
    if moderation not in ("parallel", "before"):
        raise ValueError(f"moderation must be 'parallel' or 'before', not {moderation!r}")
    if observer is not None and not isinstance(observer, Observer):
        raise TypeError(f"observer must be an asgi_llm_guard.observe.Observer (subclass it), not {observer!r}")
    if routes is not None and not isinstance(routes, Mapping):
        raise TypeError(
            f"routes must be a dict such as {{'/chat/completions': 'completion'}}, not {routes!r}"
        )
