"""A guardrail that asks any OpenAI-compatible ``/moderations`` endpoint about the request's text.

It is a :class:`~asgi_llm_guard.CustomGuardrail` (``docs/guardrails.md``), ``during_call`` and on for every request
by default: it runs while the downstream app works, so a slow endpoint costs no latency unless it is slower than
the model. Given ``event_hook=["during_call", "post_call"]`` it checks answers too, streamed ones included.
Its ``timeout`` is both the hook timeout the middleware applies and a deadline on the
whole HTTP exchange (httpx's own timeouts are per connect/read/write, so a trickling answer could outlast
them); ``fail_open`` decides what an unreachable, failing or slow endpoint means, in the hook and in the
middleware alike: ``False`` (default) refuses the request with a 503, ``True`` lets it through and logs a
warning. The prompt itself is never logged (docs/reference.md#privacy).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
import httpx

from .._types import CALL_TYPES
from ..errors import GuardError, RejectRequest
from ..guardrails import CustomGuardrail
from ..text import request_texts
from ._http import ServiceClient

__all__ = ["ModerationEndpointHook", "ModerationFlagged"]

logger = logging.getLogger("asgi_llm_guard.contrib")


class ModerationFlagged(RejectRequest):
    """The :class:`RejectRequest` raised when the endpoint flags a request; ``categories`` says why."""

    def __init__(self, message: str, categories: list[str]) -> None:
        super().__init__(message)
        self.categories = categories


class _EndpointFailed(Exception):
    pass


class ModerationEndpointHook(ServiceClient, CustomGuardrail):
    """Refuse requests that an OpenAI-compatible moderation endpoint flags.

    The request's texts (all of them, docs/reference.md#hooks) are sent joined as one ``input``. A result counts as
    flagged when one of the ``categories`` considered (default: every category in the answer) is flagged: by its score
    reaching ``thresholds[category]`` when a threshold is set for it, else by the endpoint's own boolean. The
    refusal ``message`` never quotes the prompt; a ``{categories}`` placeholder in it is replaced by the
    flagged category names. ``api_key`` defaults to ``$OPENAI_API_KEY``; pass ``""`` to send none::

        app.add_middleware(LLMHookMiddleware, hooks=[ModerationEndpointHook(thresholds={"violence": 0.3})])

    One ``httpx.AsyncClient`` is created on first use (or pass ``client=``, which the hook never closes); call
    ``await hook.aclose()`` at shutdown, or use the hook as an ``async with`` block.
    """

    def __init__(
        self,
        base_url: str = "https://api.openai.com/v1",
        *,
        api_key: str | None = None,
        model: str = "omni-moderation-latest",
        categories: Iterable[str] | None = None,
        thresholds: Mapping[str, float] | None = None,
        message: str = "Your request was blocked by a content policy.",
        timeout: float | None = 5.0,
        fail_open: bool = False,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        call_types: Iterable[str] | None = None,
        guardrail_name: str | None = None,
        event_hook: Any = "during_call",
        default_on: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(guardrail_name=guardrail_name, event_hook=event_hook, default_on=default_on, **kwargs)
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url must be an http(s) URL such as 'https://api.openai.com/v1', not {base_url!r}"
            )
        if api_key is None:
            api_key = os.environ.get("OPENAI_API_KEY")
        if api_key is not None and not isinstance(api_key, str):
            raise TypeError(f"api_key must be a str, not {type(api_key).__name__}")
        if not isinstance(model, str) or not model:
            raise TypeError("model must be a non-empty str such as 'omni-moderation-latest'")
        if not isinstance(message, str) or not message:
            raise TypeError("message must be a non-empty str: the refusal text the client receives")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
        if not isinstance(fail_open, bool):
            raise TypeError(f"fail_open must be True or False, not {fail_open!r}")
        if client is not None and not isinstance(client, httpx.AsyncClient):
            raise TypeError(f"client must be an httpx.AsyncClient, not {type(client).__name__}")
        if client is not None and transport is not None:
            raise ValueError("pass either client= or transport=, not both (give the client its transport)")

        self.url = base_url.rstrip("/") + "/moderations"
        self.model = model
        self.categories = _names(categories, "categories")
        self.thresholds = _thresholds(thresholds)
        if self.categories is not None:
            ignored = set(self.thresholds) - self.categories
            if ignored:
                raise ValueError(
                    f"thresholds for {sorted(ignored)} would never apply: those categories are not in "
                    "categories=; add them there or drop the thresholds"
                )
        self.call_types = _names(call_types, "call_types")
        unknown = sorted((self.call_types or frozenset()) - set(CALL_TYPES))
        if unknown:
            raise ValueError(f"unknown call types {unknown}; choose from {list(CALL_TYPES)}")
        self.message = message
        #: Read by the middleware: the bound on each hook call, and whether a timed-out call lets requests on.
        self.timeout = None if timeout is None else float(timeout)
        self.fail_open = fail_open
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._use_client(client, transport)

    async def apply_guardrail(
        self, inputs: dict[str, Any], request_data: Any, input_type: str, logging_obj: Any = None
    ) -> None:
        """Raise :class:`ModerationFlagged` (a :class:`RejectRequest`) when the endpoint flags the texts or the
        arguments of the tool calls (``inputs["tool_calls"]``), as the hook read them before it was a guardrail."""
        texts = list(inputs.get("texts", []))
        for call in inputs.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, Mapping) else None
            arguments = function.get("arguments") if isinstance(function, Mapping) else None
            if arguments is None and isinstance(call, Mapping):
                arguments = call.get("arguments")
            if isinstance(arguments, str) and arguments:
                texts.append(arguments)
        await self._check("\n".join(texts))

    async def async_moderation_hook(
        self, data: Mapping[str, Any], user_api_key_dict: Any, call_type: str
    ) -> None:
        """Raise :class:`ModerationFlagged` (a :class:`RejectRequest`) when the endpoint flags the request. (The
        middleware calls :meth:`apply_guardrail`; this is the same check as a LiteLLM moderation hook.)"""
        if self.call_types is not None and call_type not in self.call_types:
            return
        await self._check("\n".join(request_texts(data, call_type)))

    async def _check(self, text: str) -> None:
        if not text.strip():
            return
        try:
            results = await self._moderate(text)
        except _EndpointFailed as exc:
            reason = str(exc.__cause__ or exc) or type(exc.__cause__ or exc).__name__
            outcome = "failing open, request allowed" if self.fail_open else "failing closed, request refused"
            logger.warning("moderation endpoint %s failed (%s); %s", self.url, reason, outcome)
            if self.fail_open:
                return
            timed_out = isinstance(exc.__cause__, (TimeoutError, httpx.TimeoutException))
            raise GuardError(
                503,
                "moderation endpoint unavailable",
                type="timeout_error" if timed_out else None,
                stage="moderation",
            ) from exc.__cause__
        flagged: list[str] = []
        for result in results:
            for name in self.flagged_categories(result):
                if name not in flagged:
                    flagged.append(name)
        if flagged:
            raise ModerationFlagged(self.message.replace("{categories}", ", ".join(flagged)), flagged)

    def flagged_categories(self, result: Mapping[str, Any]) -> list[str]:
        """The considered categories one moderation ``result`` flags (``["flagged"]`` for a bare boolean)."""
        categories = result.get("categories")
        categories = categories if isinstance(categories, Mapping) else {}
        scores = result.get("category_scores")
        scores = scores if isinstance(scores, Mapping) else {}
        flagged: list[str] = []
        for name in dict.fromkeys([*categories, *scores]):
            if self.categories is not None and name not in self.categories:
                continue
            threshold = self.thresholds.get(name)
            score = scores.get(name)
            if threshold is not None and isinstance(score, (int, float)) and not isinstance(score, bool):
                hit = score >= threshold
            else:
                hit = categories.get(name) is True
            if hit:
                flagged.append(name)
        # An endpoint that answers only {"flagged": true} still flags when every category counts.
        if not flagged and self.categories is None and not categories and result.get("flagged") is True:
            flagged.append("flagged")
        return flagged

    async def _moderate(self, text: str) -> list[Mapping[str, Any]]:
        client = self._get_client()
        try:
            with anyio.fail_after(self.timeout):
                response = await client.post(
                    self.url, json={"model": self.model, "input": text}, headers=self._headers
                )
        except (httpx.HTTPError, TimeoutError) as exc:
            raise _EndpointFailed() from exc
        if response.status_code >= 400:
            raise _EndpointFailed(f"status {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise _EndpointFailed("the answer is not JSON") from exc
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or not all(isinstance(r, Mapping) for r in results):
            raise _EndpointFailed("the answer has no 'results' list")
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, model={self.model!r}, fail_open={self.fail_open})"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _names(values: Iterable[str] | None, name: str) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    elif not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of names, not {type(values).__name__}")
    names = frozenset(values)
    if not all(isinstance(value, str) for value in names):
        raise TypeError(f"{name} entries must be str")
    return names


def _thresholds(thresholds: Mapping[str, float] | None) -> dict[str, float]:
    if thresholds is None:
        return {}
    if not isinstance(thresholds, Mapping):
        raise TypeError(f"thresholds must be a dict of category -> score, not {type(thresholds).__name__}")
    checked: dict[str, float] = {}
    for category, score in thresholds.items():
        if not isinstance(category, str):
            raise TypeError(f"thresholds keys must be category names (str), not {category!r}")
        if not _is_number(score) or not 0.0 <= score <= 1.0:
            raise ValueError(f"thresholds[{category!r}] must be a score between 0 and 1, not {score!r}")
        checked[category] = float(score)
    return checked
