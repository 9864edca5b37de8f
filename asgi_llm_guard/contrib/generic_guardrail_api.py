"""A guardrail that asks any service speaking LiteLLM's Generic Guardrail API, so guard services built for
LiteLLM plug in unchanged.

The contract (LiteLLM 1.110's ``generic_guardrail_api``): ``POST {api_base}/beta/litellm_basic_guardrail_api``
with ``x-api-key`` and a JSON body ``{input_type, texts, images, tools, tool_calls, structured_messages, model,
request_data: {user_api_key_hash, …}, additional_provider_specific_params, litellm_call_id, litellm_trace_id}``;
the service answers ``{action: "NONE" | "BLOCKED" | "GUARDRAIL_INTERVENED", blocked_reason, texts,
stream_holdback_chars}``. ``BLOCKED`` refuses (a :class:`~asgi_llm_guard.RejectRequest` carrying
``blocked_reason``: a normal answer for chat, completions and the Responses API, a 400 elsewhere); returned
``texts`` replace the texts (``GUARDRAIL_INTERVENED``).

Where we differ from LiteLLM: one ``fail_open`` decides what any failure of the service means (unreachable,
timed out, an error status, an answer that is not the contract): ``False`` (default) is a 503 naming the
guardrail, ``True`` lets the text through unchanged and logs a warning. LiteLLM splits this into
``unreachable_fallback`` and ``fail_on_error``. The texts are never logged.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import anyio
import httpx

from ..errors import GuardError, RejectRequest
from ..guardrail_engine import current_user
from ..guardrails import CustomGuardrail
from ._http import ServiceClient

__all__ = ["GenericGuardrailAPI", "GuardrailServiceError"]

logger = logging.getLogger("asgi_llm_guard.contrib")

PATH = "/beta/litellm_basic_guardrail_api"
_ACTIONS = ("NONE", "BLOCKED", "GUARDRAIL_INTERVENED")


class GuardrailServiceError(GuardError):
    """The guardrail service could not give an answer (503): unreachable, timed out, or off contract."""


class _Failed(Exception):
    pass


class GenericGuardrailAPI(ServiceClient, CustomGuardrail):
    """A guardrail service behind LiteLLM's Generic Guardrail API::

        guard = GenericGuardrailAPI("http://guard.internal:8080", api_key="…", guardrail_name="corp-guard",
                                    event_hook=["pre_call", "post_call"], default_on=True, timeout=2.0)
        app.add_middleware(LLMHookMiddleware, hooks=[guard])

    ``api_base`` defaults to ``$GENERIC_GUARDRAIL_API_BASE``; the path is appended unless it is there already.
    ``timeout`` (seconds) bounds each call (also as the middleware's hook timeout); ``fail_open`` says what a
    failing service means (see the module docstring). ``headers`` are sent with every call;
    ``additional_provider_specific_params`` go into each body. One ``httpx.AsyncClient`` is created on first use
    (or pass ``client=``, never closed by the guardrail); ``await guard.aclose()`` at shutdown.
    """

    def __init__(
        self,
        api_base: str | None = None,
        *,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        additional_provider_specific_params: Mapping[str, Any] | None = None,
        guardrail_name: str | None = "generic_guardrail_api",
        event_hook: Any = "pre_call",
        default_on: bool = False,
        timeout: float | None = 5.0,
        fail_open: bool = False,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **kwargs: Any,
    ) -> None:
        base = api_base if api_base is not None else os.environ.get("GENERIC_GUARDRAIL_API_BASE")
        if not isinstance(base, str) or not base.startswith(("http://", "https://")):
            raise ValueError(
                "api_base must be the guardrail service's http(s) URL, e.g. 'http://guard:8080' (or set "
                f"GENERIC_GUARDRAIL_API_BASE), not {base!r}"
            )
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
        if not isinstance(fail_open, bool):
            raise TypeError(f"fail_open must be True or False, not {fail_open!r}")
        if client is not None and not isinstance(client, httpx.AsyncClient):
            raise TypeError(f"client must be an httpx.AsyncClient, not {type(client).__name__}")
        if client is not None and transport is not None:
            raise ValueError("pass either client= or transport=, not both (give the client its transport)")
        super().__init__(guardrail_name=guardrail_name, event_hook=event_hook, default_on=default_on, **kwargs)
        base = base.rstrip("/")
        self.api_base = base if base.endswith(PATH) else base + PATH
        self.headers = {"content-type": "application/json", **dict(headers or {})}
        if api_key:
            self.headers["x-api-key"] = api_key
        self.additional_provider_specific_params = dict(additional_provider_specific_params or {})
        #: Read by the middleware: the bound on each call, and whether a failure lets the text through.
        self.timeout = None if timeout is None else float(timeout)
        self.fail_open = fail_open
        self._use_client(client, transport)

    async def apply_guardrail(
        self, inputs: dict[str, Any], request_data: Any, input_type: str, logging_obj: Any = None
    ) -> dict[str, Any] | None:
        """Ask the service; raise :class:`RejectRequest` when it answers ``BLOCKED``, return its texts."""
        body = {
            "input_type": input_type,
            "litellm_call_id": None,
            "litellm_trace_id": None,
            "texts": list(inputs.get("texts", [])),
            "images": inputs.get("images"),
            "tools": inputs.get("tools"),
            "tool_calls": inputs.get("tool_calls"),
            "structured_messages": inputs.get("structured_messages"),
            "model": inputs.get("model"),
            "request_data": _identity(),
            "additional_provider_specific_params": self.additional_provider_specific_params or None,
        }
        try:
            answer = await self._post(body)
        except _Failed as exc:
            reason = str(exc)
            if self.fail_open:
                logger.warning("guardrail %s at %s failed (%s); fail_open: the text goes through unchecked",
                               self.guardrail_name, self.api_base, reason)
                return None
            logger.error("guardrail %s at %s failed (%s)", self.guardrail_name, self.api_base, reason)
            timed_out = isinstance(exc.__cause__, (TimeoutError, httpx.TimeoutException))
            raise GuardrailServiceError(
                503,
                f"guardrail {self.guardrail_name} unavailable",
                type="timeout_error" if timed_out else None,
            ) from exc.__cause__
        action = answer.get("action", "NONE")
        if action == "BLOCKED":
            blocked = answer.get("blocked_reason")
            raise RejectRequest(blocked if isinstance(blocked, str) and blocked else "Content violates policy")
        result: dict[str, Any] = {**inputs}
        texts = answer.get("texts")
        if texts is not None:
            result["texts"] = texts  # the middleware checks the count and types (a 500 naming this guardrail)
        holdback = answer.get("stream_holdback_chars")
        if isinstance(holdback, list):
            result["stream_holdback_chars"] = holdback
        return result

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        client = self._get_client()
        try:
            with anyio.fail_after(self.timeout):
                response = await client.post(self.api_base, json=body, headers=self.headers)
        except TimeoutError as exc:
            raise _Failed(f"no answer within {self.timeout:g}s") from exc
        except httpx.TimeoutException as exc:
            raise _Failed(f"timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise _Failed(f"unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise _Failed(f"it answered status {response.status_code}")
        try:
            answer = response.json()
        except ValueError as exc:
            raise _Failed("its answer is not JSON") from exc
        if not isinstance(answer, dict) or answer.get("action", "NONE") not in _ACTIONS:
            raise _Failed("its answer has no action NONE, BLOCKED or GUARDRAIL_INTERVENED")
        return answer

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api_base={self.api_base!r}, guardrail_name={self.guardrail_name!r})"


def _identity() -> dict[str, Any]:
    """The caller, as LiteLLM sends it in ``request_data`` (its ``GenericGuardrailAPIMetadata`` fields)."""
    user = current_user()
    if user is None:
        return {}
    fields = {
        "user_api_key_hash": user.api_key,
        "user_api_key_alias": user.key_alias,
        "user_api_key_user_id": user.user_id,
        "user_api_key_team_id": user.team_id,
        "user_api_key_end_user_id": user.end_user_id,
    }
    return {key: value for key, value in fields.items() if value is not None}
