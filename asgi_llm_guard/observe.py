"""What the middleware reports as it works, for metrics and tracing (``observer=`` on the middleware).

Subclass :class:`Observer` and override what you need; every method is a cheap no-op by default and is called
synchronously on the request's path, so keep overrides short (increment a counter, observe a histogram).
``asgi_llm_guard.contrib.prometheus`` and ``asgi_llm_guard.contrib.otel`` are two implementations; ``observer=``
also takes a list of observers (see :class:`MultiObserver`).

The events of one request are called from that request's own tasks, whose ``contextvars`` descend from the one
``request_started`` was called in: an observer can keep per-request state in a ``ContextVar`` set there (the
OpenTelemetry observer keeps its request span so). See docs/observability.md#your-own-observer.
"""

from __future__ import annotations

from collections.abc import Iterable


class Observer:
    """Receives the middleware's events::

        class Printer(Observer):
            def hook_finished(self, stage, hook, seconds, outcome):
                print(stage, hook, f"{seconds * 1000:.1f} ms", outcome)

        app.add_middleware(LLMHookMiddleware, hooks=[...], observer=Printer())
    """

    def request_started(self, call_type: str) -> None:
        """A guarded request began (its route matched)."""

    def request_parsed(self, call_type: str, model: str) -> None:
        """The request's body was read and parsed: ``model`` is the model the client asked for (``"unknown"`` when
        the body names none)."""

    def hook_started(self, stage: str, hook: str) -> None:
        """One hook call is about to start; :meth:`hook_finished` follows in the same task, whatever happens."""

    def hook_finished(self, stage: str, hook: str, seconds: float, outcome: str) -> None:
        """One hook call ended; ``outcome`` is ``"ok"``, ``"refused"`` (a pre-call hook returned a refusal
        string), ``"rejected"`` (it raised or returned ``RejectRequest``, or an exception with a status below 500,
        as a limiter's 429), ``"error"`` (any other exception), ``"timeout"`` or ``"cancelled"`` (the request was
        cancelled, e.g. its client left, while the hook ran)."""

    def request_rejected(self, stage: str | None, hook: str | None, status: int, kind: str) -> None:
        """The guard answered instead of the app: ``kind`` is ``"refusal"`` or ``"error"``; ``stage`` and ``hook``
        are ``None`` for errors no hook produced (body, auth, ``enforce_user_param``)."""

    def moderation_held(self, seconds: float) -> None:
        """How long the app's response waited for moderation hooks (0 when they finished first)."""

    def request_finished(self, call_type: str, status: int, seconds: float) -> None:
        """A guarded request ended with ``status`` (499: the client left) after ``seconds``."""

    def guardrail_finished(
        self, guardrail: str, stage: str, decision: str, seconds: float, reason: str | None
    ) -> None:
        """One guardrail (``CustomGuardrail``) was applied, or was selected and could not be: ``guardrail`` is its
        ``guardrail_name``; ``stage`` is ``"pre_call"``, ``"during_call"``, ``"post_call"`` or ``"logging_only"``;
        ``decision`` is ``"allow"``, ``"modify"``, ``"block"``, ``"error"`` (it raised something that is not a
        block, or timed out), ``"flag"`` (a ``logging_only`` guardrail would have blocked or modified) or
        ``"not_run"`` (``reason`` says why, e.g. the response was not JSON). ``seconds`` is the time spent in the
        guardrail (summed over the calls of one stream); ``reason`` is ``None`` when there is nothing to add."""

    def limiter_rejected(self, limit: str) -> None:
        """``ParallelRequestLimiter(observer=...)`` turned a request away: ``limit`` is ``"parallel"``, ``"rpm"`` or
        ``"tpm"``."""


class MultiObserver(Observer):
    """Several observers as one: every event goes to each, in order. ``observer=[a, b]`` on the middleware builds
    one::

        app.add_middleware(LLMHookMiddleware, hooks=[...], observer=[PrometheusObserver(), OpenTelemetryObserver()])
    """

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = tuple(observers)
        for observer in self.observers:
            if not isinstance(observer, Observer):
                raise TypeError(
                    f"each observer must be an asgi_llm_guard.observe.Observer (subclass it), not {observer!r}"
                )

    def request_started(self, call_type: str) -> None:
        for observer in self.observers:
            observer.request_started(call_type)

    def request_parsed(self, call_type: str, model: str) -> None:
        for observer in self.observers:
            observer.request_parsed(call_type, model)

    def hook_started(self, stage: str, hook: str) -> None:
        for observer in self.observers:
            observer.hook_started(stage, hook)

    def hook_finished(self, stage: str, hook: str, seconds: float, outcome: str) -> None:
        for observer in reversed(self.observers):  # the last started is the first to finish, as spans nest
            observer.hook_finished(stage, hook, seconds, outcome)

    def request_rejected(self, stage: str | None, hook: str | None, status: int, kind: str) -> None:
        for observer in self.observers:
            observer.request_rejected(stage, hook, status, kind)

    def moderation_held(self, seconds: float) -> None:
        for observer in self.observers:
            observer.moderation_held(seconds)

    def request_finished(self, call_type: str, status: int, seconds: float) -> None:
        for observer in reversed(self.observers):
            observer.request_finished(call_type, status, seconds)

    def guardrail_finished(
        self, guardrail: str, stage: str, decision: str, seconds: float, reason: str | None
    ) -> None:
        for observer in self.observers:
            observer.guardrail_finished(guardrail, stage, decision, seconds, reason)

    def limiter_rejected(self, limit: str) -> None:
        for observer in self.observers:
            observer.limiter_rejected(limit)


def combine(observer: Observer | Iterable[Observer] | None) -> Observer | None:
    """The one observer the middleware calls for ``observer=``: ``None``, an observer, or a list of them (a list
    of one is that one; an empty list is ``None``, so no request pays for observing)."""
    if observer is None or isinstance(observer, Observer):
        return observer
    if isinstance(observer, (str, bytes)) or not isinstance(observer, Iterable):
        raise TypeError(
            f"observer must be an asgi_llm_guard.observe.Observer (subclass it) or a list of them, not {observer!r}"
        )
    observers = MultiObserver(observer).observers
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]
    return MultiObserver(observers)
