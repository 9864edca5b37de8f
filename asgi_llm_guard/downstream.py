"""The request the downstream app receives: the final ``data`` (as the hooks left it) encoded as its body, and the
scope it comes with, which carries the guard's findings in ``scope["state"]["llm_guard"]``.
"""

from __future__ import annotations

from typing import Any

import orjson

from ._types import Scope
from .bodies import ReplayedReceive
from .call import CallState, GuardState
from .errors import GuardError, Halt
from .guardrail_engine import strip_guardrail_fields
from .litellm_adapter import forwarded_body
from .multipart import FormBody

#: ASGI extensions with which the server, not the app, sends the body bytes (`http.response.pathsend`, zero-copy).
_BODYLESS_SENDS = frozenset({"http.response.pathsend", "http.response.zerocopysend"})


def downstream_request(
    call: CallState,
    scope: Scope,
    headers: list[tuple[bytes, bytes]],
    form: FormBody | None,
    receive: ReplayedReceive,
    litellm_fields: bool,
    max_body_bytes: int,
) -> Scope:
    """The final ``data`` as the body the app receives (replayed by ``receive``), and the scope it comes with;
    ``headers`` are the client's, less those the body's new encoding replaces."""
    try:
        data: dict[str, Any] = forwarded_body(call.data) if litellm_fields else call.data
        if form is not None:
            # Edited text fields, the file bytes unchanged; a 413 before joining when over max_body_bytes (the
            # form's part headers may be longer than the client's). A JSON body is not bounded again: it
            # grows only through hooks (trusted) or rare number spellings (1e15 written out).
            body, content_type = form.encode(data, max_body_bytes)
        else:
            if "guardrails" in data or "metadata" in data:
                strip_guardrail_fields(data)  # read by the guard, not the app (docs/reference.md#guardrails)
            body, content_type = orjson.dumps(data), b"application/json"
    except TypeError as exc:
        raise call.unencodable(exc, call.hooks.pre_call, "pre_call") from None
    except GuardError as over_limit:
        raise Halt(over_limit, over_limit) from None
    receive.replay(body)
    headers.append((b"content-type", content_type))
    headers.append((b"content-length", str(len(body)).encode()))
    scope = dict(scope)
    scope["headers"] = headers
    extensions = scope.get("extensions")
    if extensions and not call.plain_response and _BODYLESS_SENDS.intersection(extensions):
        # A hook reads the answer: the app must send it as body messages, not have the server send a file
        # (no hook could see it; docs/reference.md#unreadable-responses).
        scope["extensions"] = {k: v for k, v in extensions.items() if k not in _BODYLESS_SENDS}
    state = scope.get("state")
    if state is None:
        state = scope["state"] = {}
    # With LiteLLM hooks, the app's view is the body it received (without what LiteLLM consumes).
    state["llm_guard"] = GuardState(call.call_type, call.user, data)
    return scope
