"""Exceptions hooks raise and receive, and the mapping of any exception to an OpenAI-shaped error
(docs/reference.md#errors).

Any exception with an integer ``status_code`` is honoured, whichever framework defined it (Starlette, FastAPI,
Litestar, or the user's own), so a LiteLLM handler that raises FastAPI's ``HTTPException`` works unchanged.
Anything else is a bug in the hook: a 500 whose message names the hook, never the exception's text (that could
carry a prompt or a key), unless the middleware was built with ``expose_hook_errors=True``.

One exception to the ``status_code`` rule: an error a provider SDK or an HTTP client raised for a call the hook
(or the app) made (:func:`is_dependency_error`) is that dependency's failure, not the client's. Its status
describes the service's own call: an ``openai.AuthenticationError`` from the service's key must not tell the client
that *its* key is bad. It is a 502 instead, its status and message logged at ERROR (the operator's to fix; a
provider masks keys in them), never sent.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Mapping
from typing import Any

import orjson

logger = logging.getLogger("asgi_llm_guard")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """The OpenAI error ``type`` for a status: ``error_type(429) == "rate_limit_error"``."""
    known = _TYPE_BY_STATUS.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if 400 <= status < 500 else "internal_server_error"


class RejectRequest(Exception):
    """Raise from any hook to refuse the request with ``message`` (docs/reference.md#refusals).

    Chat, text-completion and Responses API requests get a normal 200 answer carrying the message, in the
    format (streamed or not) the client asked for; every other call type gets a 400 error with the message::

        async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
            if "forbidden" in str(data.get("messages")):
                raise RejectRequest("I can't help with that.")
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.stage: str | None = None  # set by the middleware: where the refusal came from
        self.hook: str | None = None


class UpstreamError(Exception):
    """What ``async_post_call_failure_hook`` receives when the downstream app answered with a status >= 400.

    ``status_code`` is that status, ``body`` the raw response body and ``message`` the OpenAI envelope's
    ``error.message`` when the body has one, else the decoded body::

        async def async_post_call_failure_hook(self, request_data, original_exception, user_api_key_dict):
            if isinstance(original_exception, UpstreamError) and original_exception.status_code == 429:
                ...
    """

    def __init__(self, status_code: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status_code
        self.body = body
        self.headers: dict[str, str] = dict(headers or {})
        self.message = _upstream_message(body)
        super().__init__(f"downstream app answered {status_code}: {self.message}")


def _upstream_message(body: bytes) -> str:
    """The envelope's ``error.message`` (``{"error": {"message": …}}``), else the body decoded: nothing else is
    taken for a message, so ``{"detail": "Not Found"}`` stays itself."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return body.decode("utf-8", "replace")


class GuardError(Exception):
    """An error answered by the middleware itself: a status, an OpenAI error envelope and extra headers.

    Failure hooks receive one for errors that no hook raised (body, ``enforce_user_param`` and ``auth``
    errors, timeouts), so ``original_exception.status_code`` is always there to read.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        stage: str | None = None,
        hook: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type or error_type(status_code)
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})
        self.stage = stage
        self.hook = hook

    def body(self) -> bytes:
        """The JSON error envelope of docs/reference.md#errors."""
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": str(self.status_code),
                }
            }
        )


class ResponseClosed(Exception):
    """Raised into the downstream app when it sends after the response to the client has ended."""


class Halt(Exception):
    """Internal: ends a guarded request with ``outcome`` (a refusal or an error); ``original`` is what the
    failure hooks see."""

    def __init__(self, outcome: RejectRequest | GuardError, original: BaseException) -> None:
        super().__init__(str(outcome))
        self.outcome = outcome
        self.original = original


def as_error(outcome: RejectRequest | GuardError) -> GuardError:
    """A refusal as the 400 error it becomes where it cannot be an answer (docs/reference.md#refusals)."""
    return GuardError(400, outcome.message) if isinstance(outcome, RejectRequest) else outcome


def status_of(exc: BaseException) -> int | None:
    """The integer ``status_code`` an exception carries, if any: a final HTTP status, 200 to 599 (``bool`` is not a
    status, and a 1xx cannot end a response)."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and 200 <= status <= 599:
        return status
    return None


def message_of(exc: BaseException) -> str:
    """The client-facing message of an exception that carries a status (docs/reference.md#errors).

    ``detail`` when it is a string; from a dict ``detail``: ``detail["error"]`` (a string),
    ``detail["error"]["message"]`` or ``detail["message"]``, else the dict as JSON. Without ``detail``,
    ``message`` (as on ``openai`` SDK errors and our own) or the exception's text.
    """
    detail = getattr(exc, "detail", None)
    if isinstance(detail, str):
        return detail
    if isinstance(detail, Mapping):
        error = detail.get("error")
        if isinstance(error, str):
            return error
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(detail.get("message"), str):
            return str(detail["message"])
        return orjson.dumps(detail, default=str).decode()
    if detail is not None and not isinstance(detail, str):
        return orjson.dumps(detail, default=str).decode()
    message = getattr(exc, "message", None)
    if isinstance(message, str) and message:
        return message
    return str(exc) or type(exc).__name__


#: Headers that describe the error body the middleware writes: an exception cannot set them.
_BODY_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding", "content-encoding"})


def headers_of(exc: BaseException) -> dict[str, str]:
    """The response headers an exception asks for (``HTTPException(..., headers={"Retry-After": "3"})``), except
    those describing the body: the error envelope is JSON of a known length whatever the exception says."""
    headers: Any = getattr(exc, "headers", None)
    if isinstance(headers, Mapping):
        return {str(k): str(v) for k, v in headers.items() if str(k).lower() not in _BODY_HEADERS}
    return {}


#: The base classes of what provider SDKs and HTTP clients raise when a call they made failed, by module. Looked up
#: in ``sys.modules`` only: an SDK that was never imported raised nothing, and importing one here would cost startup.
_DEPENDENCY_ERRORS = (
    ("openai", "APIError"),
    ("anthropic", "APIError"),
    ("httpx", "HTTPError"),
    ("requests", "RequestException"),
    ("aiohttp", "ClientError"),
)
#: LiteLLM's refusals subclass ``openai.APIError`` but are raised on purpose, to answer the client; so do the
#: errors that are also an ``HTTPException`` (LiteLLM's limiter raises ``ProxyRateLimitError``, both a
#: ``RateLimitError`` and an ``HTTPException``, for its 429: docs/litellm.md).
_RAISED_ON_PURPOSE = frozenset({"RejectedRequestError", "ModifyResponseException", "HTTPException"})

#: The message suffix of a hook's (or the app's) dependency failure.
DEPENDENCY_FAILED = "upstream dependency error"


def is_dependency_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error a provider SDK or HTTP client raised for a call that failed (``openai.APIError``
    and ``anthropic.APIError`` with their subclasses, ``httpx.HTTPError``, ``requests.RequestException``,
    ``aiohttp.ClientError``): the failure of a dependency of the service, whatever status it carries."""
    modules = sys.modules
    for module_name, class_name in _DEPENDENCY_ERRORS:
        module = modules.get(module_name)
        if module is None:
            continue
        base = getattr(module, class_name, None)
        if isinstance(base, type) and isinstance(exc, base):
            return not any(cls.__name__ in _RAISED_ON_PURPOSE for cls in type(exc).__mro__)
    return False


def dependency_status(exc: BaseException) -> str:
    """``", status 401"`` for a dependency error that carries a status (``response.status_code`` for httpx's),
    else ``""``, for the log line."""
    status = status_of(exc)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return f", status {status}" if isinstance(status, int) and not isinstance(status, bool) else ""


def from_exception(exc: BaseException, *, stage: str | None = None) -> GuardError | None:
    """A :class:`GuardError` for an exception that carries a status, else ``None``. A dependency's error
    (:func:`is_dependency_error`) gives ``None`` too: its status is not the client's."""
    if isinstance(exc, GuardError):
        return exc
    status = status_of(exc)
    if status is None or is_dependency_error(exc):
        return None
    return GuardError(status, message_of(exc), headers=headers_of(exc), stage=stage)


def log_exception(what: str, exc: BaseException, *, expose: bool = False) -> None:
    """Log ``exc`` at ERROR with its type and traceback frames, but not its message unless ``expose``; the
    message goes to a DEBUG record of its own, for the operator who turns DEBUG on for ``asgi_llm_guard``.

    A hook's or app's exception text often quotes the prompt or a key (``ValueError(f"bad prompt {data}")``), and
    logs travel further than responses (docs/reference.md#privacy); the frames are what a developer needs to find the
    bug, the message what an operator needs to see why it failed (docs/observability.md#logs).
    """
    frames = "".join(traceback.format_tb(exc.__traceback__))
    detail = f"{type(exc).__name__}: {exc}" if expose else f"{type(exc).__name__} (message withheld)"
    logger.error("%s raised %s\nTraceback (most recent call last):\n%s", what, detail, frames.rstrip("\n"))
    if not expose and logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s raised %s: %s", what, type(exc).__name__, exc)
