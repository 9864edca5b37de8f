"""What the middleware reports as it works, for metrics and tracing (``observer=`` on the middleware).

Subclass :class:`Observer` and override what you need; every method is a cheap no-op by default and is called
synchronously on the request's path, so keep overrides short (increment a counter, observe a histogram).
``asgi_llm_guard.contrib.prometheus`` is one implementation.
"""

from __future__ import annotations


class Observer:
    """Receives the middleware's events::

        class Printer(Observer):
            def hook_finished(self, stage, hook, seconds, outcome):
                print(stage, hook, f"{seconds * 1000:.1f} ms", outcome)

        app.add_middleware(LLMHookMiddleware, hooks=[...], observer=Printer())
    """

    def request_started(self, call_type: str) -> None:
        """A guarded request began (its route matched)."""

    def hook_finished(self, stage: str, hook: str, seconds: float, outcome: str) -> None:
        """One hook call ended; ``outcome`` is ``"ok"``, ``"rejected"`` (it refused, or raised an exception with a
        status below 500, as a limiter's 429), ``"error"`` (any other exception) or ``"timeout"``."""

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
