"""Ready-made hooks and integrations::

    from asgi_llm_guard.contrib import ModerationEndpointHook, ParallelRequestLimiter, PromptPatternGuard

    hooks = [PromptPatternGuard(deny=[r"\\bforbidden\\b"]), ModerationEndpointHook(),
             ParallelRequestLimiter(max_parallel_requests=5, rpm_limit=60, per="key")]

- ``PromptPatternGuard``: refuse or mask text matching regular expressions (a guardrail, pre-call by default).
- ``ModerationEndpointHook``: an OpenAI-compatible ``/moderations`` endpoint (a guardrail, during-call by default).
- ``GenericGuardrailAPI``: any guard service speaking LiteLLM's Generic Guardrail API, as a guardrail.
- ``ParallelRequestLimiter``: parallel, per-minute request and token limits, shared through the ``DualCache``.
- ``PrometheusObserver``: Prometheus metrics (``asgi-llm-guard[prometheus]``), imported on first use.
- ``OpenTelemetryObserver``: OpenTelemetry spans (``asgi-llm-guard[otel]``), imported on first use.
"""

from typing import Any

from .generic_guardrail_api import GenericGuardrailAPI
from .limiter import LimiterObserver, ParallelRequestLimiter
from .moderation_endpoint import ModerationEndpointHook
from .pattern_guard import PromptPatternGuard

__all__ = ["GenericGuardrailAPI", "LimiterObserver", "ModerationEndpointHook", "OpenTelemetryObserver",
           "ParallelRequestLimiter", "PrometheusObserver", "PromptPatternGuard"]


def __getattr__(name: str) -> Any:
    # prometheus-client and opentelemetry-api are optional extras: import them only when asked for.
    if name == "PrometheusObserver":
        from .prometheus import PrometheusObserver

        return PrometheusObserver
    if name == "OpenTelemetryObserver":
        from .otel import OpenTelemetryObserver

        return OpenTelemetryObserver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
