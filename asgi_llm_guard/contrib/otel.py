"""``OpenTelemetryObserver``: the middleware's events as OpenTelemetry spans (extra ``asgi-llm-guard[otel]``).

It depends on ``opentelemetry-api`` only: the application brings the SDK, its exporters and its sampling, and
without an SDK every span is the API's no-op. Spans (docs/observability.md#opentelemetry-traces):

- ``llm_guard.request``, one per guarded request: a child of the span current when the request reached the
  middleware (the server's or an ASGI instrumentation's), and the current span while the app and the hooks run,
  so their own spans nest under it. Attributes ``llm_guard.call_type``, ``llm_guard.model``,
  ``llm_guard.decision`` (``allow``, ``refuse``, ``block``, ``error``), ``llm_guard.stage`` and ``llm_guard.hook``
  when the guard answered, ``http.response.status_code`` (499: the client left), ``llm_guard.duration_ms`` and
  ``llm_guard.moderation_held_ms``.
- ``llm_guard.guardrail``, one per guardrail applied (or selected and not run): ``llm_guard.guardrail`` (its
  name), ``llm_guard.stage``, ``llm_guard.decision`` (``allow``, ``modify``, ``block``, ``error``, ``flag``,
  ``not_run``), ``llm_guard.reason`` when there is one, and ``llm_guard.duration_ms``. The observer hears of a
  guardrail when it is done, so its span is recorded then, backdated by its duration (for a stream, the sum of its
  calls).
- ``llm_guard.hook``, one per hook call, a child of the request's span (and the parent of what the hook does):
  ``llm_guard.stage``, ``llm_guard.hook`` (the class name), ``llm_guard.outcome``, ``llm_guard.decision`` and
  ``llm_guard.duration_ms``.

A span ends with the error status when the guard refused or blocked the request, when it failed (5xx), when the
client left, and for a hook call that did not return normally. No span holds the prompt, the response or the API
key: the events it is built from carry none of them (docs/reference.md#privacy).
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..observe import Observer

__all__ = ["OpenTelemetryObserver"]

#: A hook call's outcome as a decision (the same words as the request's).
_HOOK_DECISIONS = {
    "ok": "allow",
    "refused": "refuse",
    "rejected": "block",
    "error": "error",
    "timeout": "error",
    "cancelled": "cancelled",
}


def _opentelemetry() -> tuple[Any, Any]:
    try:
        from opentelemetry import context, trace
    except ImportError as exc:
        raise ImportError(
            "OpenTelemetryObserver needs the opentelemetry-api package: install the extra with "
            "pip install 'asgi-llm-guard[otel]'"
        ) from exc
    return context, trace


@dataclass
class _RequestSpan:
    span: Any
    context_token: object  # OpenTelemetry's, for detaching the request's span in request_finished
    request_token: Token[_RequestSpan | None] | None = None
    decision: str = "allow"
    stage: str | None = None
    hook: str | None = None


@dataclass
class _HookSpan:
    span: Any
    context_token: object
    outer: _HookSpan | None  # the hook call this one runs inside, in the same task (rare: a hook calling a hook)


class OpenTelemetryObserver(Observer):
    """One span per guarded request and one per hook call::

        from opentelemetry.sdk.trace import TracerProvider
        from asgi_llm_guard.contrib import OpenTelemetryObserver, PrometheusObserver

        app.add_middleware(LLMHookMiddleware, hooks=[...],
                           observer=[PrometheusObserver(), OpenTelemetryObserver(tracer_provider=TracerProvider())])

    ``tracer_provider``: an OpenTelemetry ``TracerProvider`` (default: the global one, whatever the application
    set with ``opentelemetry.trace.set_tracer_provider``).
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        context, trace = _opentelemetry()
        self._context = context
        self._trace = trace
        self._error = trace.Status(trace.StatusCode.ERROR)
        self.tracer = trace.get_tracer("asgi_llm_guard", __version__, tracer_provider=tracer_provider)
        # Per request and per task: the middleware calls every event of a request from tasks whose context
        # descends from the one request_started ran in (docs/observability.md#your-own-observer).
        self._request: ContextVar[_RequestSpan | None] = ContextVar(f"llm_guard_otel_request_{id(self)}", default=None)
        self._hook: ContextVar[_HookSpan | None] = ContextVar(f"llm_guard_otel_hook_{id(self)}", default=None)

    def _start(self, name: str, attributes: dict[str, Any]) -> tuple[Any, object]:
        span = self.tracer.start_span(name, attributes=attributes)
        return span, self._context.attach(self._trace.set_span_in_context(span))

    # -- the request ----------------------------------------------------------------------------------------

    def request_started(self, call_type: str) -> None:
        span, token = self._start("llm_guard.request", {"llm_guard.call_type": call_type})
        request = _RequestSpan(span, token)
        request.request_token = self._request.set(request)

    def request_parsed(self, call_type: str, model: str) -> None:
        request = self._request.get()
        if request is not None:
            request.span.set_attribute("llm_guard.model", model)

    def request_rejected(self, stage: str | None, hook: str | None, status: int, kind: str) -> None:
        request = self._request.get()
        if request is None:
            return
        if kind == "refusal":
            request.decision = "refuse"
        else:
            request.decision = "error" if status >= 500 else "block"
        request.stage, request.hook = stage, hook

    def moderation_held(self, seconds: float) -> None:
        request = self._request.get()
        if request is not None:
            request.span.set_attribute("llm_guard.moderation_held_ms", seconds * 1000)

    def request_finished(self, call_type: str, status: int, seconds: float) -> None:
        request = self._request.get()
        if request is None:
            return
        span = request.span
        decision = request.decision
        if decision == "allow" and status >= 500:
            decision = "error"
        attributes: dict[str, Any] = {
            "llm_guard.decision": decision,
            "http.response.status_code": status,
            "llm_guard.duration_ms": seconds * 1000,
        }
        if request.stage is not None:
            attributes["llm_guard.stage"] = request.stage
        if request.hook is not None:
            attributes["llm_guard.hook"] = request.hook
        span.set_attributes(attributes)
        if status == 499:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, "the client left"))
        elif decision != "allow":
            where = f" at {request.stage}" if request.stage else ""
            by = f" by {request.hook}" if request.hook else ""
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, f"{decision}{where}{by}"))
        self._context.detach(request.context_token)
        if request.request_token is not None:
            self._request.reset(request.request_token)
        span.end()

    # -- hook calls -----------------------------------------------------------------------------------------

    def hook_started(self, stage: str, hook: str) -> None:
        span, token = self._start("llm_guard.hook", {"llm_guard.stage": stage, "llm_guard.hook": hook})
        self._hook.set(_HookSpan(span, token, self._hook.get()))

    def hook_finished(self, stage: str, hook: str, seconds: float, outcome: str) -> None:
        call = self._hook.get()
        if call is None:
            return
        self._hook.set(call.outer)
        self._context.detach(call.context_token)
        span = call.span
        span.set_attributes(
            {
                "llm_guard.outcome": outcome,
                "llm_guard.decision": _HOOK_DECISIONS.get(outcome, outcome),
                "llm_guard.duration_ms": seconds * 1000,
            }
        )
        if outcome not in ("ok", "refused"):
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, outcome))
        span.end()

    # -- guardrails -----------------------------------------------------------------------------------------

    def guardrail_finished(
        self, guardrail: str, stage: str, decision: str, seconds: float, reason: str | None
    ) -> None:
        attributes: dict[str, Any] = {
            "llm_guard.guardrail": guardrail,
            "llm_guard.stage": stage,
            "llm_guard.decision": decision,
            "llm_guard.duration_ms": seconds * 1000,
        }
        if reason is not None:
            attributes["llm_guard.reason"] = reason  # the package's own words (why it did not run), never the text
        span = self.tracer.start_span(
            "llm_guard.guardrail", attributes=attributes, start_time=time.time_ns() - int(seconds * 1e9)
        )
        if decision in ("block", "error"):
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, decision))
        span.end()

    # -- ParallelRequestLimiter(observer=...) -------------------------------------------------------------

    def limiter_rejected(self, limit: str) -> None:
        """A ``ParallelRequestLimiter`` given this observer answered 429: the request's span names the limit."""
        request = self._request.get()
        if request is not None:
            request.span.set_attribute("llm_guard.limit", limit)
