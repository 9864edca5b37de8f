"""LiteLLM's own hook classes, run with LiteLLM's runtime contract (docs/litellm.md, "Bringing LiteLLM hooks").

A hook whose class derives from ``litellm``'s ``CustomLogger`` (``CustomGuardrail`` included) is wrapped at
construction in a :class:`LiteLLMHook`, which gives it what the LiteLLM proxy gives it:

- the proxy's ``call_type`` names (``"acompletion"``, ``"aembedding"``, ...), every argument by keyword;
- success hooks get LiteLLM's response object for the call type (``ModelResponse``, ``TextCompletionResponse``,
  ``EmbeddingResponse``, ``ResponsesAPIResponse``, ``ImageResponse``); what they change in it, or return, goes
  back to the client as JSON;
- iterator hooks get ``ModelResponseStream`` chunks (``TextCompletionResponse`` for text completions), and what
  they yield is sent as JSON; the per-chunk hook gets the stream's text so far as a ``str``, as the proxy passes it;
- a ``CustomGuardrail``'s hooks run only where ``should_run_guardrail`` says so, with LiteLLM's event types;
- ``async_log_success_event`` / ``async_log_failure_event`` are called once per guarded request, with the
  ``kwargs`` LiteLLM's own hooks read (``litellm_params.metadata.user_api_key…``, ``standard_logging_object``);
- LiteLLM's ``RejectedRequestError`` and ``ModifyResponseException`` (a guardrail's "passthrough" block) are
  refusals, answered as :class:`~asgi_llm_guard.RejectRequest` is.

Only the methods a class really defines count, found through its MRO down to LiteLLM's base classes: a
``CustomLogger`` subclass with just a pre-call hook costs one pre-call hook, never a buffered response.

This module imports nothing from ``litellm`` until a LiteLLM hook is wrapped: :func:`is_litellm_hook` reads the
class's MRO, which names LiteLLM's classes only when ``litellm`` is already imported.

Differences from the proxy, on purpose: a pre-call hook's ``str`` is our refusal (the proxy answers 400 because
of its call-type names); an inherited pre-call or iterator hook runs (the proxy only runs one defined on the
class itself); a plain exception is our 500 naming the hook, not the exception's text.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import fields
from typing import Any

from .auth import UserAPIKeyAuth, hash_key
from .errors import RejectRequest
from .guardrails import EVENT_HOOKS, CustomGuardrail

logger = logging.getLogger("asgi_llm_guard")

#: The ``call_type`` the LiteLLM proxy passes its hooks on each of our routes (its route handlers' names).
LITELLM_CALL_TYPES = {
    "completion": "acompletion",
    "text_completion": "atext_completion",
    "embeddings": "aembedding",
    "image_generation": "aimage_generation",
    "moderation": "moderation",
    "audio_transcription": "transcription",
    "responses": "aresponses",
    "anthropic_messages": "anthropic_messages",
}

#: Request fields LiteLLM consumes and never sends to the model; removed from the body the app receives.
CONSUMED_FIELDS = frozenset(
    (
        "guardrails",
        "litellm_call_id",
        "litellm_logging_obj",
        "litellm_metadata",
        "proxy_server_request",
        "secret_fields",
        "guardrail_to_apply",
    )
)

#: Where this module keeps a request's LiteLLM state (text streamed so far, the exception, the response) in the
#: request's ``data``: hooks get nothing else per request. Never forwarded (see :func:`forwarded_body`).
STATE_KEY = "_llm_guard_litellm"

_LITELLM_BASES = {
    ("litellm.integrations.custom_logger", "CustomLogger"),
    ("litellm.integrations.custom_guardrail", "CustomGuardrail"),
}

#: Classes that need the LiteLLM proxy itself (its router, database or background jobs), by qualified name.
NEEDS_PROXY = {
    # Its budget is an agent's setting in the proxy's agent registry, charged with the proxy's computed cost:
    # here no agent is registered, so it would find no budget and let every request through.
    "litellm.proxy.hooks.max_budget_per_session_limiter._PROXY_MaxBudgetPerSessionHandler": (
        "the proxy's agent registry (max_budget_per_session is an agent's setting) and its spend tracking"
    ),
    "litellm.proxy.hooks.parallel_request_limiter_v3._PROXY_MaxParallelRequestsHandler_v3": (
        "the proxy's router and its Redis client; use _PROXY_MaxParallelRequestsHandler (v1) with "
        "InternalUsageCache(asgi_llm_guard.DualCache(...)), or asgi_llm_guard's own limiter"
    ),
    "litellm.proxy.hooks.dynamic_rate_limiter._PROXY_DynamicRateLimitHandler": "the proxy's router",
    "litellm.proxy.hooks.dynamic_rate_limiter_v3._PROXY_DynamicRateLimitHandlerV3": "the proxy's router",
    "litellm.proxy.hooks.batch_rate_limiter._PROXY_BatchRateLimiter": "the proxy's router and database",
    "litellm.proxy.hooks.model_max_budget_limiter._PROXY_VirtualKeyModelMaxBudgetLimiter": (
        "the proxy's router and spend database"
    ),
    "litellm.proxy.hooks.proxy_track_cost_callback._ProxyDBLogger": "the proxy's spend database",
    "litellm.proxy.hooks.key_management_event_hooks.KeyManagementEventHooks": "the proxy's key database",
    "litellm.proxy.hooks.user_management_event_hooks.UserManagementEventHooks": "the proxy's user database",
}


def is_litellm_hook(hook: object) -> bool:
    """Whether ``hook`` is an instance of LiteLLM's ``CustomLogger`` (without importing ``litellm``)."""
    return any((klass.__module__, klass.__name__) in _LITELLM_BASES for klass in type(hook).__mro__)


def overridden(hook: object, name: str) -> bool:
    """Whether the hook's class defines ``name`` itself or inherits it from a class that is not one of
    LiteLLM's bases (whose methods are no-ops for us)."""
    if name in getattr(hook, "__dict__", {}):
        return True
    for klass in type(hook).__mro__:
        if (klass.__module__, klass.__name__) in _LITELLM_BASES or klass is object:
            return False
        if name in vars(klass):
            return True
    return False


class _Lib:
    """The LiteLLM names this module uses, imported on first need."""

    def __init__(self) -> None:
        import litellm
        from litellm.integrations.custom_guardrail import CustomGuardrail
        from litellm.types.guardrails import GuardrailEventHooks
        from litellm.types.llms.openai import ResponsesAPIResponse

        self.litellm = litellm
        self.CustomGuardrail = CustomGuardrail
        self.events = GuardrailEventHooks
        self.response_types: dict[str, Any] = {
            "completion": litellm.ModelResponse,
            "text_completion": litellm.TextCompletionResponse,
            "embeddings": litellm.EmbeddingResponse,
            "image_generation": litellm.ImageResponse,
            "responses": ResponsesAPIResponse,
        }
        self.chunk_types: dict[str, Any] = {
            "completion": litellm.ModelResponseStream,
            "text_completion": litellm.TextCompletionResponse,
        }
        self.refusals: tuple[type[BaseException], ...] = (litellm.exceptions.RejectedRequestError,)
        modify = getattr(litellm.exceptions, "ModifyResponseException", None)
        if isinstance(modify, type):
            self.refusals += (modify,)


_lib: _Lib | None = None


def lib() -> _Lib:
    global _lib
    if _lib is None:
        _install_proxy_state()
        _lib = _Lib()
    return _lib


#: What LiteLLM's hooks read from the proxy's module when no proxy runs: no router, no database, no settings.
_PROXY_STATE: dict[str, Any] = {
    "llm_router": None,
    "prisma_client": None,
    "general_settings": {},
    "proxy_logging_obj": None,
    "premium_user": False,
    "master_key": None,
    "llm_model_list": None,
    "proxy_config": None,
    "user_api_key_cache": None,
    "configured_max_request_size_mb": None,
    "litellm_proxy_admin_name": "default_user_id",
}


def _install_proxy_state() -> None:
    """Stand in for ``litellm.proxy.proxy_server`` unless it is already imported.

    LiteLLM's hooks look up the proxy's router and database at call time (``from litellm.proxy.proxy_server
    import llm_router``). Importing that module builds the whole proxy (its FastAPI app, scheduler and config:
    seconds, and dependencies of its own); without a proxy the answer is "none", which the hooks handle as a
    proxy without a router or database does. Any other name fails the import with a message saying why, so a
    hook that needs the proxy fails (a 500), never passes requests unchecked (docs/litellm.md)."""
    name = "litellm.proxy.proxy_server"
    if name in sys.modules:
        return
    import types

    import litellm.proxy
    from litellm.proxy import _types as proxy_types

    module = types.ModuleType(name, "asgi_llm_guard's stand-in for the LiteLLM proxy's module state (no proxy runs)")
    module.__dict__.update(_PROXY_STATE)
    module.__dict__["general_settings"] = {}
    for exported in ("UserAPIKeyAuth", "CommonProxyErrors", "LiteLLM_TeamTable"):
        if hasattr(proxy_types, exported):
            module.__dict__[exported] = getattr(proxy_types, exported)

    class StreamingCallbackError(Exception):
        pass

    module.__dict__["StreamingCallbackError"] = StreamingCallbackError

    def missing(attribute: str) -> Any:
        raise AttributeError(
            f"litellm.proxy.proxy_server.{attribute} belongs to the LiteLLM proxy, which does not run under "
            f"LLMHookMiddleware: a hook that needs it cannot run here (see docs/litellm.md)"
        )

    module.__dict__["__getattr__"] = missing
    sys.modules[name] = module
    litellm.proxy.proxy_server = module


class _RequestState:
    """One request's LiteLLM bookkeeping, kept in its ``data`` under :data:`STATE_KEY`."""

    __slots__ = ("_call_id", "started", "text_so_far", "exception", "response", "client_metadata")

    def __init__(self) -> None:
        self._call_id: str | None = None
        self.started = time.time()
        self.text_so_far = ""
        self.exception: BaseException | None = None
        self.response: Any = None
        self.client_metadata: frozenset[str] | None = None


    @property
    def call_id(self) -> str:
        """LiteLLM's ``litellm_call_id`` for the logging callbacks (made when first asked for)."""
        if self._call_id is None:
            self._call_id = str(uuid.uuid4())
        return self._call_id


def _state(data: dict[str, Any]) -> _RequestState:
    state = data.get(STATE_KEY)
    if not isinstance(state, _RequestState):
        state = data[STATE_KEY] = _RequestState()
    return state


def note_received(data: dict[str, Any], identity_metadata: Any = None) -> None:
    """Called by the middleware as the body is parsed: remembers which ``metadata`` keys the client sent, so
    what hooks add there is not forwarded; then, as the proxy does with a key's or team's guardrails, adds the
    guardrails the caller's identity names to ``metadata["guardrails"]``, where LiteLLM's hooks look."""
    metadata = data.get("metadata")
    state = _state(data)
    state.client_metadata = frozenset(metadata) if isinstance(metadata, dict) else None
    named = identity_metadata.get("guardrails") if isinstance(identity_metadata, dict) else None
    if isinstance(named, list) and named:
        if not isinstance(metadata, dict):
            metadata = data["metadata"] = {}
        else:
            metadata = data["metadata"] = dict(metadata)  # the client's dict stays as it sent it
        present = metadata.get("guardrails")
        listed = list(present) if isinstance(present, list) else []
        metadata["guardrails"] = listed + [name for name in named if name not in listed]


def forwarded_body(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as the app should receive it: without the fields LiteLLM consumes (:data:`CONSUMED_FIELDS`),
    and with ``metadata`` holding only the keys the client sent (hooks note things there, e.g. Presidio's PII
    token map, that must not travel on)."""
    state = data.get(STATE_KEY)
    body = {key: value for key, value in data.items() if key not in CONSUMED_FIELDS and key != STATE_KEY}
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        sent = state.client_metadata if isinstance(state, _RequestState) else frozenset(metadata)
        kept = {} if sent is None else {key: value for key, value in metadata.items() if key in sent}
        kept.pop("guardrails", None)  # read by the guard, not the app (docs/guardrails.md)
        if kept:
            body["metadata"] = kept  # a copy: the hooks' data keeps what they noted
        else:
            del body["metadata"]
    return body


def _dump(value: Any) -> Any:
    """A LiteLLM (pydantic) object as the JSON value the proxy sends for it."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_none=True, exclude_unset=True)
    return value


def _refusal_message(exc: BaseException) -> str:
    message = str(getattr(exc, "message", "") or exc)
    for prefix in ("litellm.BadRequestError: ", "litellm.RejectedRequestError: "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return message


def _chunk_text(chunk: Mapping[str, Any]) -> str:
    """What ``litellm.get_response_string`` reads from a chat chunk: the choices' delta contents, joined."""
    parts = []
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict):
            delta = choice.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                parts.append(delta["content"])
    return "".join(parts)


class _StreamErrorFrame(Exception):
    """A per-chunk hook returned an SSE error frame (``"data: {...}"``): the proxy sends it and ends the stream."""

    def __init__(self, error: Mapping[str, Any]) -> None:
        message = error.get("message")
        super().__init__(message if isinstance(message, str) else "The stream was stopped by a streaming hook.")
        self.message = str(self)
        code = error.get("code")
        self.status_code = int(code) if isinstance(code, (int, str)) and str(code).isdigit() else 400


_LOGS = frozenset(("async_log_success_event", "async_log_failure_event"))


def _plan_methods(hook: object) -> tuple[frozenset[str], dict[str, str]]:
    """The LiteLLM methods ``hook`` defines, and our hook methods to bind: ``{our name: wrapper method}``."""
    defines = frozenset(name for name in _WRAPPERS if overridden(hook, name))
    plan = {name: _WRAPPERS[name] for name in defines - _LOGS}
    if defines & _LOGS:
        # Logging callbacks run once per request as it ends; the failure and the response are noted on the way.
        plan["async_post_call_complete_hook"] = "_log_event"
        plan.setdefault("async_post_call_failure_hook", "_note_failure")
        if "async_log_success_event" in defines:
            plan.setdefault("async_post_call_success_hook", "_note_response")
    return defines, plan


#: LiteLLM methods the proxy calls in places an ASGI middleware has no counterpart for (router deployments,
#: model listings, the SDK's own request); a class overriding one is told so at construction.
NOT_CALLED = {
    "async_post_call_response_headers_hook": "response headers from hooks are not supported here",
    "async_filter_listed_models": "the middleware does not answer /v1/models",
    "async_pre_call_deployment_hook": "there are no router deployments here",
    "async_post_call_success_deployment_hook": "there are no router deployments here",
    "async_post_call_failure_deployment_hook": "there are no router deployments here",
    "async_post_call_streaming_deployment_hook": "there are no router deployments here",
    "async_pre_request_hook": "the middleware calls no provider itself",
    "async_post_mcp_tool_call_hook": "MCP routes are not guarded",
}


def _warn_not_called(hook: object) -> None:
    for name, reason in NOT_CALLED.items():
        if overridden(hook, name):
            logger.warning(
                "%s.%s is not called under LLMHookMiddleware (%s; see docs/litellm.md)",
                type(hook).__name__, name, reason,
            )


def _timeout_of(hook: object) -> float | None:
    timeout = getattr(hook, "timeout", None)
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return float(timeout)
    return None


class _Calls:
    """The wrapper methods: each calls the LiteLLM method of the same role as the proxy calls it. Needs
    ``hook``, ``_lib``, ``guardrail`` (the guard to ask ``should_run_guardrail``, or None when someone else
    gates), ``defines`` and ``__llm_guard_name__``."""

    hook: Any
    _lib: _Lib
    guardrail: Any
    defines: frozenset[str]
    __llm_guard_name__: str

    # -- gating ------------------------------------------------------------------------------------------

    def _runs(self, data: dict[str, Any], event: str) -> bool:
        """A guardrail's own say on whether it runs for this request and event (always True for a plain logger)."""
        guard = self.guardrail
        if guard is None:
            return True
        return bool(guard.should_run_guardrail(data=data, event_type=getattr(self._lib.events, event)) is True)

    def _refused(self, exc: BaseException) -> BaseException:
        if isinstance(exc, self._lib.refusals):
            return RejectRequest(_refusal_message(exc))
        return exc

    # -- the wrapped hook methods ------------------------------------------------------------------------

    async def _pre_call(self, user_api_key_dict: Any, cache: Any, data: Any, call_type: Any) -> Any:
        if not self._runs(data, "pre_call"):
            return None
        _state(data)
        try:
            return await self.hook.async_pre_call_hook(
                user_api_key_dict=user_api_key_dict,
                cache=cache,
                data=data,
                call_type=LITELLM_CALL_TYPES.get(call_type, call_type),
            )
        except Exception as exc:
            raise self._refused(exc) from exc

    async def _moderation(self, data: Any, user_api_key_dict: Any, call_type: Any) -> Any:
        if not self._runs(data, "during_call"):
            return None
        try:
            return await self.hook.async_moderation_hook(
                data=data, user_api_key_dict=user_api_key_dict, call_type=LITELLM_CALL_TYPES.get(call_type, call_type)
            )
        except Exception as exc:
            raise self._refused(exc) from exc

    def _typed_response(self, response: Any) -> Any:
        """The response as the LiteLLM object the proxy would hand over, by the shape of the JSON body."""
        if not isinstance(response, dict):
            return response
        obj = response.get("object")
        kind = {
            "chat.completion": "completion",
            "text_completion": "text_completion",
            "list": "embeddings",
            "response": "responses",
        }.get(obj if isinstance(obj, str) else "")
        if kind is None and "data" in response and "created" in response and "object" not in response:
            kind = "image_generation"
        factory = self._lib.response_types.get(kind or "")
        if factory is None:
            return response
        try:
            return factory(**response)
        except Exception as exc:  # a body LiteLLM's type rejects: the hook gets the JSON, as for other call types
            logger.warning(
                "%s gets the %s response as JSON: LiteLLM's %s rejected it (%s)",
                self.__llm_guard_name__, kind, getattr(factory, "__name__", factory), type(exc).__name__,
            )
            return response

    async def _success(self, data: Any, user_api_key_dict: Any, response: Any) -> Any:
        if not self._runs(data, "post_call"):
            return None
        typed = self._typed_response(response)
        before = _dump(typed) if typed is not response else None
        try:
            result = await self.hook.async_post_call_success_hook(
                data=data, user_api_key_dict=user_api_key_dict, response=typed
            )
        except Exception as exc:
            raise self._refused(exc) from exc
        _state(data).response = typed if result is None else result
        if result is None or result is typed:  # kept (many hooks return the response they were given)
            if typed is response:
                return None  # the JSON itself, edited in place or not
            after = _dump(typed)
            return None if after == before else after
        return _dump(result)

    async def _note_response(self, data: Any, user_api_key_dict: Any, response: Any) -> None:
        _state(data).response = self._typed_response(response)

    async def _failure(self, request_data: Any, original_exception: Any, user_api_key_dict: Any) -> Any:
        _state(request_data).exception = original_exception
        return await self.hook.async_post_call_failure_hook(
            request_data=request_data, original_exception=original_exception, user_api_key_dict=user_api_key_dict
        )

    async def _note_failure(self, request_data: Any, original_exception: Any) -> None:
        _state(request_data).exception = original_exception

    async def _chunk(self, user_api_key_dict: Any, response: Any, request_data: Any) -> Any:
        # The proxy calls this hook for chat chunks only, with the text so far (a str), not the chunk.
        if not isinstance(response, dict) or response.get("object") != "chat.completion.chunk":
            return None
        if not self._runs(request_data, "post_call"):
            return None
        state = _state(request_data)
        text = state.text_so_far + _chunk_text(response)
        try:
            result = await self.hook.async_post_call_streaming_hook(
                user_api_key_dict=user_api_key_dict, response=text
            )
        except Exception as exc:
            raise self._refused(exc) from exc
        if result is None:
            state.text_so_far = text
            return None
        if isinstance(result, str):
            import orjson

            if result.startswith("data: "):
                try:
                    frame = orjson.loads(result[6:])
                except orjson.JSONDecodeError:
                    frame = None
                if isinstance(frame, dict) and isinstance(frame.get("error"), dict):
                    raise _StreamErrorFrame(frame["error"])
            raise TypeError(
                f"{self.__llm_guard_name__}.async_post_call_streaming_hook returned a str, which the LiteLLM proxy "
                "writes as a non-JSON SSE frame; return a ModelResponseStream, None, or raise to stop the stream"
            )
        chunk = _dump(result)
        if isinstance(chunk, dict):
            state.text_so_far += _chunk_text(chunk)
        return chunk

    async def _iterator(self, user_api_key_dict: Any, response: Any, request_data: Any) -> AsyncIterator[Any]:
        if not self._runs(request_data, "post_call"):
            async for chunk in response:
                yield chunk
            return
        chunks = self._typed_chunks(response)
        try:
            async for item in self.hook.async_post_call_streaming_iterator_hook(
                user_api_key_dict=user_api_key_dict, response=chunks, request_data=request_data
            ):
                yield _dump(item)
        except Exception as exc:
            raise self._refused(exc) from exc

    async def _typed_chunks(self, chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
        types = self._lib.chunk_types
        async for chunk in chunks:
            kind = None
            if isinstance(chunk, dict):
                obj = chunk.get("object")
                kind = "completion" if obj == "chat.completion.chunk" else obj
            factory = types.get(kind) if isinstance(kind, str) else None
            if factory is None:
                yield chunk
                continue
            try:
                yield factory(**chunk)
            except Exception:
                yield chunk

    async def _log_event(self, request_data: Any, user_api_key_dict: Any, status_code: Any, call_type: Any) -> None:
        # The proxy logs a request well after its hooks ran, so what they started in tasks of their own (the
        # limiter writes its counters in one) is done first; a fast request here could otherwise be logged
        # before that task ran, and the task would then overwrite the release with the count it took.
        await asyncio.sleep(0)
        state = _state(request_data)
        ended = time.time()
        failed = status_code >= 400 or state.exception is not None
        kwargs = logging_kwargs(
            request_data, user_api_key_dict, state, failed, ended, LITELLM_CALL_TYPES.get(call_type, call_type)
        )
        if failed and "async_log_failure_event" in self.defines:
            kwargs["exception"] = state.exception if state.exception is not None else Exception(str(status_code))
            await self.hook.async_log_failure_event(kwargs, None, state.started, ended)
        elif not failed and "async_log_success_event" in self.defines:
            await self.hook.async_log_success_event(
                kwargs, state.response, state.started, ended
            )


class LiteLLMHook(_Calls):
    """One LiteLLM ``CustomLogger`` behind the middleware's hook interface, with only the hook methods its
    class defines. Built by :func:`adapt` for every LiteLLM hook that is not a guardrail run by the guardrail
    engine; the wrapped object is ``hook``."""

    def __init__(self, hook: object) -> None:
        self.hook = hook
        self.__llm_guard_name__ = type(hook).__name__
        self._lib = lib()
        self.guardrail = hook if isinstance(hook, self._lib.CustomGuardrail) else None
        timeout = _timeout_of(hook)
        if timeout is not None:
            self.timeout = timeout
        self.defines, plan = _plan_methods(hook)
        for name, wrapper in plan.items():
            setattr(self, name, getattr(self, wrapper))

    def __repr__(self) -> str:
        return f"LiteLLMHook({self.hook!r})"


#: The call hooks the proxy replaces with ``apply_guardrail`` for a guardrail that implements it.
_GUARDRAIL_STAGES = frozenset(
    (
        "async_pre_call_hook",
        "async_moderation_hook",
        "async_post_call_success_hook",
        "async_post_call_streaming_hook",
        "async_post_call_streaming_iterator_hook",
    )
)

#: The LiteLLM methods this module maps, each to the wrapper method that calls it.
_WRAPPERS = {
    "async_pre_call_hook": "_pre_call",
    "async_moderation_hook": "_moderation",
    "async_post_call_success_hook": "_success",
    "async_post_call_failure_hook": "_failure",
    "async_post_call_streaming_hook": "_chunk",
    "async_post_call_streaming_iterator_hook": "_iterator",
    "async_log_success_event": "_log_event",
    "async_log_failure_event": "_log_event",
}


def logging_kwargs(
    data: Mapping[str, Any], user: Any, state: _RequestState, failed: bool, ended: float, call_type: str
) -> dict[str, Any]:
    """The ``kwargs`` LiteLLM's logging callbacks receive, with the fields its hooks read."""
    request_metadata = data.get("metadata")
    metadata: dict[str, Any] = dict(request_metadata) if isinstance(request_metadata, dict) else {}
    identity = {
        "user_api_key": getattr(user, "api_key", None),
        "user_api_key_hash": getattr(user, "api_key", None),
        "user_api_key_alias": getattr(user, "key_alias", None),
        "user_api_key_user_id": getattr(user, "user_id", None),
        "user_api_key_team_id": getattr(user, "team_id", None),
        "user_api_key_org_id": getattr(user, "org_id", None),
        "user_api_key_end_user_id": getattr(user, "end_user_id", None),
        "user_api_key_metadata": getattr(user, "metadata", None) or {},
        "user_api_key_team_metadata": getattr(user, "team_metadata", None),
        "user_api_key_model_max_budget": getattr(user, "model_max_budget", None),
        "user_api_key_team_alias": getattr(user, "team_alias", None),
    }
    metadata.update(identity)
    usage = getattr(state.response, "usage", None)
    tokens = {
        "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
        "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
        "total_tokens": getattr(usage, "total_tokens", 0) or 0,
    }
    model = data.get("model")
    standard = {
        "id": state.call_id,
        "call_type": call_type,
        "status": "failure" if failed else "success",
        "model": model,
        "model_group": model,
        "metadata": {key: value for key, value in identity.items() if key != "user_api_key"},
        "startTime": state.started,
        "endTime": ended,
        "response_cost": 0.0,
        "error_str": None if state.exception is None else str(state.exception),
        "end_user": getattr(user, "end_user_id", None),
        **tokens,
    }
    return {
        "model": model,
        "messages": data.get("messages"),
        "user": getattr(user, "end_user_id", None),
        "stream": bool(data.get("stream")),
        "call_type": call_type,
        "litellm_call_id": state.call_id,
        "litellm_params": {"metadata": metadata, "litellm_call_id": state.call_id},
        "standard_logging_object": standard,
        "response_cost": 0.0,
        "start_time": state.started,
        "end_time": ended,
    }


class LiteLLMGuardrail(CustomGuardrail, _Calls):
    """A LiteLLM ``CustomGuardrail`` run by our guardrail engine (docs/guardrails.md), chosen by its own
    ``should_run_guardrail`` with LiteLLM's event types. One that implements ``apply_guardrail`` is run as the
    proxy runs it through its unified guardrail (its texts on every route, streamed or not; its call hooks are
    not called, as in the proxy); one that overrides the call hooks has those run, with LiteLLM's objects.
    Built by :func:`adapt` as a subclass named after the LiteLLM class, so errors and metrics name it."""

    def __init__(self, guard: Any) -> None:
        library = lib()
        hook = getattr(guard, "event_hook", None)
        if hook is None:  # LiteLLM: no event_hook means every event
            named: list[str] = ["pre_call", "during_call", "post_call"]
        else:
            entries = hook if isinstance(hook, (list, tuple, set)) else [hook]
            named = [str(getattr(entry, "value", entry)) for entry in entries]
        modes = [mode for mode in EVENT_HOOKS if mode in named]
        if not modes:
            raise ValueError(
                f"{type(guard).__name__} runs on {named}, none of which a guarded HTTP route has "
                f"(choose from {list(EVENT_HOOKS)})"
            )
        super().__init__(
            guardrail_name=getattr(guard, "guardrail_name", None), event_hook=modes, default_on=guard.default_on
        )
        self.hook = guard
        self.__llm_guard_name__ = type(guard).__name__
        self._lib = library
        self.guardrail = None  # the engine asks should_run_guardrail
        self.defines = _plan_methods(guard)[0]
        timeout = _timeout_of(guard)
        if timeout is not None:
            self.timeout = timeout
        holdback = getattr(guard, "stream_holdback_chars", None)
        if isinstance(holdback, int) and not isinstance(holdback, bool):
            self.stream_holdback_chars = holdback

    def should_run_guardrail(self, data: Mapping[str, Any], event_type: Any) -> bool:
        event = self._lib.events(str(getattr(event_type, "value", event_type)))
        return bool(self.hook.should_run_guardrail(data=data, event_type=event) is True)

    def __repr__(self) -> str:
        return f"LiteLLMGuardrail({self.hook!r})"


class _ApplyGuardrail:
    hook: Any
    _lib: _Lib

    async def apply_guardrail(
        self, inputs: dict[str, Any], request_data: dict[str, Any], input_type: str, logging_obj: Any = None
    ) -> dict[str, Any] | None:
        try:
            result = await self.hook.apply_guardrail(
                inputs=inputs, request_data=request_data, input_type=input_type, logging_obj=None
            )
        except Exception as exc:
            if isinstance(exc, self._lib.refusals):
                raise RejectRequest(_refusal_message(exc)) from exc
            raise
        return result if isinstance(result, dict) or result is None else dict(result)


def uses_apply_guardrail(hook: object) -> bool:
    """A LiteLLM guardrail the proxy runs through its unified guardrail: it implements ``apply_guardrail`` and
    does not ask for its own lifecycle hooks (``use_native_lifecycle_hooks``)."""
    return overridden(hook, "apply_guardrail") and not getattr(hook, "use_native_lifecycle_hooks", False)


def adapt(hook: object) -> object:
    """``hook`` as the middleware binds it: a LiteLLM guardrail implementing ``apply_guardrail`` as a
    :class:`LiteLLMGuardrail`, any other LiteLLM hook as a :class:`LiteLLMHook`, anything else as it is."""
    if not is_litellm_hook(hook):
        return hook
    qualified = f"{type(hook).__module__}.{type(hook).__qualname__}"
    if qualified in NEEDS_PROXY:
        raise TypeError(
            f"{type(hook).__name__} needs the LiteLLM proxy itself ({NEEDS_PROXY[qualified]}); it cannot run "
            f"under LLMHookMiddleware (see docs/litellm.md)"
        )
    _attach_no_router(hook)
    _warn_not_called(hook)
    if not isinstance(hook, lib().CustomGuardrail):
        return LiteLLMHook(hook)
    bases: tuple[type, ...] = (LiteLLMGuardrail,)
    _, plan = _plan_methods(hook)
    if uses_apply_guardrail(hook):
        bases = (_ApplyGuardrail, LiteLLMGuardrail)
        plan = {name: wrapper for name, wrapper in plan.items() if name not in _GUARDRAIL_STAGES}
    namespace: dict[str, Any] = {"__module__": type(hook).__module__}
    namespace.update({name: getattr(_Calls, wrapper) for name, wrapper in plan.items()})
    return type(type(hook).__name__, bases, namespace)(hook)


def _attach_no_router(hook: object) -> None:
    """What the proxy's startup does for a hook with ``update_environment`` (the prompt-injection detector):
    hand it the router, here none. A detector configured to ask an LLM (``llm_api_check``) refuses to start
    without one, as in a proxy without a model list; unattached, it would let every request through unchecked."""
    update = getattr(hook, "update_environment", None)
    if not callable(update):
        return
    try:
        update(router=None)
    except Exception as exc:
        raise TypeError(
            f"{type(hook).__name__} needs the LiteLLM proxy's router ({exc}); it cannot run under "
            "LLMHookMiddleware with this configuration (see docs/litellm.md)"
        ) from exc


def is_adapted(hook: object) -> bool:
    """Whether :func:`adapt` wrapped ``hook``."""
    return isinstance(hook, (LiteLLMHook, LiteLLMGuardrail))


_OUR_FIELDS = tuple(f.name for f in fields(UserAPIKeyAuth))


def is_litellm_identity(user: object) -> bool:
    """Whether ``user`` is LiteLLM's ``UserAPIKeyAuth`` (read from its class, without importing ``litellm``)."""
    klass = type(user)
    return klass.__name__ == "UserAPIKeyAuth" and klass.__module__.startswith("litellm.")


def from_litellm_identity(user: Any) -> UserAPIKeyAuth:
    """LiteLLM's ``UserAPIKeyAuth`` (what a LiteLLM ``user_api_key_auth`` returns) as ours.

    ``api_key`` is the hashed key, as everywhere here: LiteLLM's ``token`` (its hash), else the hash of its
    ``api_key``."""
    values: dict[str, Any] = {}
    for name in _OUR_FIELDS:
        value = getattr(user, name, None)
        if value is not None:
            values[name] = value
    token = getattr(user, "token", None)
    raw = getattr(user, "api_key", None)
    if isinstance(token, str) and token:
        values["api_key"] = token
    else:
        values["api_key"] = hash_key(raw) if isinstance(raw, str) and raw else None
    return UserAPIKeyAuth(**values)


def to_litellm_identity(user: UserAPIKeyAuth) -> Any:
    """Ours as LiteLLM's ``UserAPIKeyAuth`` (imports ``litellm``), for code that insists on its type."""
    from litellm.proxy._types import UserAPIKeyAuth as LiteLLMUserAPIKeyAuth

    known = LiteLLMUserAPIKeyAuth.model_fields
    values = {name: getattr(user, name) for name in _OUR_FIELDS if name in known and name != "api_key"}
    values["token"] = user.api_key
    values["api_key"] = user.api_key
    return LiteLLMUserAPIKeyAuth.model_construct(**values)


def litellm_loaded() -> bool:
    """Whether ``litellm`` has been imported in this process."""
    return "litellm" in sys.modules
