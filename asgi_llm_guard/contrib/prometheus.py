"""``PrometheusObserver``: the middleware's events as Prometheus metrics (extra ``asgi-llm-guard[prometheus]``).

Metrics (with the default ``namespace="llm_guard"``):

=============================================  ==========  ====================================================
name                                           type        labels and meaning
=============================================  ==========  ====================================================
``llm_guard_requests_total``                   counter     ``call_type``: guarded requests started
``llm_guard_request_duration_seconds``         histogram   ``call_type``: time from start to the end of the
                                                           response (streams included)
``llm_guard_responses_total``                  counter     ``call_type``, ``status``: how guarded requests
                                                           ended (``status`` is the HTTP status; 499: the
                                                           client left)
``llm_guard_rejections_total``                 counter     ``stage``, ``hook``, ``kind``: answers the guard gave
                                                           instead of the app; ``kind`` is ``refusal`` or
                                                           ``error``; ``stage``/``hook`` are ``none`` for
                                                           errors no hook produced (body, auth, user param)
``llm_guard_hook_duration_seconds``            histogram   ``stage``, ``hook``: each hook call (``hook`` is the
                                                           hook's class name)
``llm_guard_hook_failures_total``              counter     ``stage``, ``hook``, ``outcome``: hook calls that
                                                           rejected (``rejected``), raised (``error``) or
                                                           timed out (``timeout``)
``llm_guard_moderation_held_seconds``          histogram   how long the app's response waited for moderation
                                                           hooks (0 when they finished first)
``llm_guard_limiter_rejections_total``         counter     ``limit``: ``parallel``, ``rpm`` or ``tpm`` 429s of a
                                                           ``ParallelRequestLimiter`` given ``observer=``
``llm_guard_guardrail_decisions_total``        counter     ``guardrail``, ``stage``, ``decision``: each guardrail
                                                           decision (``allow``, ``modify``, ``block``, ``error``,
                                                           ``flag``, ``not_run``); ``stage`` is its mode
``llm_guard_guardrail_duration_seconds``       histogram   ``guardrail``, ``stage``: time in the guardrail (a
                                                           stream's calls summed)
=============================================  ==========  ====================================================

Each observer registers its metrics in its own ``CollectorRegistry`` unless you pass ``registry=`` (for example
``prometheus_client.REGISTRY`` to serve them with your other metrics), so several apps or tests in one process
never collide over metric names. Serve them with :meth:`PrometheusObserver.metrics_app`, mounted at any path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..observe import Observer

__all__ = ["PrometheusObserver"]

_FAILURES = frozenset({"rejected", "error", "timeout"})
#: Hook calls are usually fast (a regex) but may call a service (moderation endpoints).
HOOK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Whole LLM requests, streams included, can take minutes.
REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "PrometheusObserver needs the prometheus-client package: install the extra with "
            "pip install 'asgi-llm-guard[prometheus]'"
        ) from exc
    return prometheus_client


class PrometheusObserver(Observer):
    """Counts guarded requests, rejections, hook latencies and limiter 429s as Prometheus metrics::

        observer = PrometheusObserver()
        app = Starlette(routes=[..., Mount("/metrics", app=observer.metrics_app())])
        app.add_middleware(LLMHookMiddleware, hooks=[ParallelRequestLimiter(rpm_limit=60, observer=observer)],
                           observer=observer)

    ``registry``: a ``prometheus_client.CollectorRegistry`` (default: a fresh one per observer).
    ``namespace``: the metric name prefix (default ``"llm_guard"``). The histograms' buckets may be changed with
    ``hook_buckets`` and ``request_buckets`` (seconds).
    """

    def __init__(
        self,
        registry: Any = None,
        namespace: str = "llm_guard",
        *,
        hook_buckets: Sequence[float] = HOOK_BUCKETS,
        request_buckets: Sequence[float] = REQUEST_BUCKETS,
    ) -> None:
        prometheus = _prometheus()
        if registry is None:
            registry = prometheus.CollectorRegistry()
        elif not isinstance(registry, prometheus.CollectorRegistry):
            raise TypeError(f"registry must be a prometheus_client.CollectorRegistry, not {registry!r}")
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str such as 'llm_guard', not {namespace!r}")
        self.registry = registry
        self.namespace = namespace
        common: dict[str, Any] = {"namespace": namespace, "registry": registry}
        counter, histogram = prometheus.Counter, prometheus.Histogram
        self.requests_total = counter("requests", "Guarded requests started.", ["call_type"], **common)
        self.request_duration = histogram(
            "request_duration_seconds",
            "Guarded request time, response streamed to the end.",
            ["call_type"],
            buckets=tuple(request_buckets),
            **common,
        )
        self.responses_total = counter(
            "responses", "Guarded requests ended, by HTTP status (499: client left).", ["call_type", "status"], **common
        )
        self.rejections_total = counter(
            "rejections",
            "Answers the guard gave instead of the app (refusal or error).",
            ["stage", "hook", "kind"],
            **common,
        )
        self.hook_duration = histogram(
            "hook_duration_seconds", "Hook call time.", ["stage", "hook"], buckets=tuple(hook_buckets), **common
        )
        self.hook_failures_total = counter(
            "hook_failures", "Hook calls that raised or timed out.", ["stage", "hook", "outcome"], **common
        )
        self.moderation_held_seconds = histogram(
            "moderation_held_seconds",
            "Time the app's response waited for moderation hooks.",
            buckets=tuple(hook_buckets),
            **common,
        )
        self.limiter_rejections_total = counter(
            "limiter_rejections", "ParallelRequestLimiter rejections (429), by limit.", ["limit"], **common
        )

        self.guardrail_decisions_total = counter(
            "guardrail_decisions",
            "Guardrail decisions (allow, modify, block, error, flag, not_run).",
            ["guardrail", "stage", "decision"],
            **common,
        )
        self.guardrail_duration = histogram(
            "guardrail_duration_seconds",
            "Time spent in a guardrail per request and stage.",
            ["guardrail", "stage"],
            buckets=tuple(hook_buckets),
            **common,
        )

    def metrics_app(self) -> Any:
        """prometheus-client's ASGI app serving this observer's registry; mount it at the path you choose::

            Mount("/metrics", app=observer.metrics_app())
        """
        return _prometheus().make_asgi_app(registry=self.registry)

    # -- Observer -----------------------------------------------------------------------------------------

    def request_started(self, call_type: str) -> None:
        self.requests_total.labels(call_type).inc()

    def hook_finished(self, stage: str, hook: str, seconds: float, outcome: str) -> None:
        self.hook_duration.labels(stage, hook).observe(seconds)
        if outcome in _FAILURES:  # a refusal is counted by rejections_total; a cancelled call did not fail
            self.hook_failures_total.labels(stage, hook, outcome).inc()

    def request_rejected(self, stage: str | None, hook: str | None, status: int, kind: str) -> None:
        self.rejections_total.labels(stage or "none", hook or "none", kind).inc()

    def moderation_held(self, seconds: float) -> None:
        self.moderation_held_seconds.observe(seconds)

    def request_finished(self, call_type: str, status: int, seconds: float) -> None:
        self.request_duration.labels(call_type).observe(seconds)
        self.responses_total.labels(call_type, str(status)).inc()

    def guardrail_finished(
        self, guardrail: str, stage: str, decision: str, seconds: float, reason: str | None
    ) -> None:
        self.guardrail_decisions_total.labels(guardrail, stage, decision).inc()
        if decision != "not_run":
            self.guardrail_duration.labels(guardrail, stage).observe(seconds)

    # -- ParallelRequestLimiter(observer=...) -------------------------------------------------------------

    def limiter_rejected(self, limit: str) -> None:
        """A ``ParallelRequestLimiter`` given this observer answered 429 for ``limit`` (parallel, rpm, tpm)."""
        self.limiter_rejections_total.labels(limit).inc()
