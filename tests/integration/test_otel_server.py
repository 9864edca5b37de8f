"""OpenTelemetryObserver under a real uvicorn server: the request span of a stream ends when the stream does, and a
client that leaves mid-stream ends it with 499 and the error status, its hook spans all inside it; the request's
context is attached and detached in the server's own task without a complaint from OpenTelemetry."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from asgi_llm_guard import LLMHookMiddleware
from asgi_llm_guard.contrib import OpenTelemetryObserver
from tests.apps import Downstream, chat
from tests.integration.test_streaming_server import Endless, Upper
from tests.servers import serve


async def spans_named(exporter: InMemorySpanExporter, name: str, count: int) -> list[Any]:
    deadline = time.perf_counter() + 5
    while time.perf_counter() < deadline:
        found = [s for s in exporter.get_finished_spans() if s.name == name]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    return [s for s in exporter.get_finished_spans() if s.name == name]


@pytest.fixture
def traced() -> tuple[InMemorySpanExporter, OpenTelemetryObserver]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, OpenTelemetryObserver(tracer_provider=provider)


async def test_a_streamed_answer_is_one_request_span_over_its_chunks(
    traced: tuple[InMemorySpanExporter, OpenTelemetryObserver], caplog: pytest.LogCaptureFixture
) -> None:
    exporter, observer = traced
    app = LLMHookMiddleware(Downstream(words=("a", " b", " c")), hooks=[Upper()], observer=observer)
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        response = await http.post("/v1/chat/completions", json=chat(stream=True))
    assert response.status_code == 200 and b"[DONE]" in response.content
    (request,) = await spans_named(exporter, "llm_guard.request", 1)
    hooks = [s for s in exporter.get_finished_spans() if s.name == "llm_guard.hook"]
    assert len(hooks) == 4
    assert all(h.parent.span_id == request.context.span_id for h in hooks)
    assert request.attributes["http.response.status_code"] == 200
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]


async def test_a_client_leaving_mid_stream_ends_the_request_span_with_499(
    traced: tuple[InMemorySpanExporter, OpenTelemetryObserver], caplog: pytest.LogCaptureFixture
) -> None:
    exporter, observer = traced
    caplog.set_level(logging.WARNING)
    app = LLMHookMiddleware(Endless(), hooks=[Upper()], observer=observer)
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        async with http.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as response:
            seen = b""
            async for piece in response.aiter_raw():
                seen += piece
                if seen.count(b"data:") >= 3:
                    break
        (request,) = await spans_named(exporter, "llm_guard.request", 1)
    assert request.attributes["http.response.status_code"] == 499
    assert request.status.status_code == StatusCode.ERROR
    hooks = [s for s in exporter.get_finished_spans() if s.name == "llm_guard.hook"]
    assert len(hooks) >= 3
    assert all(h.parent.span_id == request.context.span_id and h.end_time <= request.end_time for h in hooks)
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]
