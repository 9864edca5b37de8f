from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from asgi_llm_guard import LLMHookMiddleware
from asgi_llm_guard.contrib import OpenTelemetryObserver, PrometheusObserver, PromptPatternGuard

provider = TracerProvider()  # your SDK set-up, with any exporter (OTLP, Jaeger, the console)
provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))

metrics = PrometheusObserver()
traces = OpenTelemetryObserver(tracer_provider=provider)  # or OpenTelemetryObserver(): the global provider

app = FastAPI()
app.add_middleware(
    LLMHookMiddleware,
    hooks=[PromptPatternGuard(deny=[r"\bforbidden\b"])],
    observer=[metrics, traces],  # both at once: a list of observers
)
app.mount("/metrics", metrics.metrics_app())
