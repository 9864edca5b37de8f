"""Ready-made hooks and integrations::

    from asgi_llm_guard.contrib import ModerationEndpointHook, ParallelRequestLimiter, PromptPatternGuard

    hooks = [PromptPatternGuard(deny=[r"\\bforbidden\\b"]), ModerationEndpointHook(),
             ParallelRequestLimiter(max_parallel_requests=5, rpm_limit=60, per="key")]

- ``PromptPatternGuard``: refuse or mask prompts matching regular expressions (pre-call).
- ``ModerationEndpointHook``: an OpenAI-compatible ``/moderations`` endpoint as a moderation hook.
- ``ParallelRequestLimiter``: parallel, per-minute request and token limits, shared through the ``DualCache``.
- ``PrometheusObserver``: Prometheus metrics (``asgi-llm-guard[prometheus]``), imported on first use.
"""

from typing import Any

from .limiter import LimiterObserver, ParallelRequestLimiter
from .moderation_endpoint import ModerationEndpointHook
from .pattern_guard import PromptPatternGuard

__all__ = ["LimiterObserver", "ModerationEndpointHook", "ParallelRequestLimiter", "PrometheusObserver",
           "PromptPatternGuard"]


def __getattr__(name: str) -> Any:
    # prometheus-client is an optional extra: import it only when asked for.
    if name == "PrometheusObserver":
        from .prometheus import PrometheusObserver

        return PrometheusObserver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
