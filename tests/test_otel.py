"""OpenTelemetryObserver: one span per guarded request and per hook call, with stable attributes, exported by the
OpenTelemetry SDK's in-memory exporter; and observer=[...] feeding several observers at once."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import httpx
import orjson
import pytest
from fastapi import HTTPException
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from asgi_llm_guard import CustomGuardrail, LLMHookMiddleware, RejectRequest
from asgi_llm_guard.contrib import OpenTelemetryObserver, PrometheusObserver
from asgi_llm_guard.observe import MultiObserver, Observer
from tests.apps import Downstream, Script, body_messages, chat, client, http_scope


@pytest.fixture(autouse=True)
def no_context_errors(caplog: pytest.LogCaptureFixture) -> Any:
    """OpenTelemetry logs (not raises) "Failed to detach context" when a span's context is detached in another
    task than it was attached in: every test here fails on that."""
    yield
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry") and r.levelno >= logging.WARNING]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    (span,) = spans(exporter, name)
    return span


class Screen:
    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        prompt = data["messages"][-1]["content"]
        if "refuse" in prompt:
            return "I can't help with that."
        if "forbidden" in prompt:
            raise HTTPException(status_code=400, detail="Violated content policy")
        if "crash" in prompt:
            raise ValueError("the hook broke")
        return None


async def test_an_allowed_request_has_a_request_span_and_a_hook_span_under_it(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = LLMHookMiddleware(Downstream(), hooks=[Screen()], observer=OpenTelemetryObserver(tracer_provider=provider))
    async with client(app) as http:
        response = await http.post("/v1/chat/completions", json=chat("good morning"))
    assert response.status_code == 200
    request, hook = only(exporter, "llm_guard.request"), only(exporter, "llm_guard.hook")
    attributes = dict(request.attributes or {})
    assert 0 < attributes.pop("llm_guard.duration_ms") < 5000  # type: ignore[operator]
    assert attributes == {
        "llm_guard.call_type": "completion",
        "llm_guard.model": "gpt-test",
        "llm_guard.decision": "allow",
        "http.response.status_code": 200,
    }
    assert request.status.status_code == StatusCode.UNSET
    assert hook.parent is not None and hook.parent.span_id == request.context.span_id
    assert hook.context.trace_id == request.context.trace_id
    assert {k: v for k, v in (hook.attributes or {}).items() if k != "llm_guard.duration_ms"} == {
        "llm_guard.stage": "pre_call",
        "llm_guard.hook": "Screen",
        "llm_guard.outcome": "ok",
        "llm_guard.decision": "allow",
    }
    assert request.start_time <= hook.start_time <= hook.end_time <= request.end_time  # type: ignore[operator]


async def test_a_refusal_marks_the_request_span_refused_with_error_status(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = LLMHookMiddleware(Downstream(), hooks=[Screen()], observer=OpenTelemetryObserver(tracer_provider=provider))
    async with client(app) as http:
        response = await http.post("/v1/chat/completions", json=chat("please refuse this"))
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    request, hook = only(exporter, "llm_guard.request"), only(exporter, "llm_guard.hook")
    assert request.attributes["llm_guard.decision"] == "refuse"  # type: ignore[index]
    assert request.attributes["llm_guard.stage"] == "pre_call"  # type: ignore[index]
    assert request.attributes["llm_guard.hook"] == "Screen"  # type: ignore[index]
    assert request.status.status_code == StatusCode.ERROR
    assert hook.attributes["llm_guard.outcome"] == "refused"  # type: ignore[index]
    assert hook.attributes["llm_guard.decision"] == "refuse"  # type: ignore[index]


async def test_a_block_and_a_broken_hook_are_errors_on_both_spans(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = LLMHookMiddleware(Downstream(), hooks=[Screen()], observer=OpenTelemetryObserver(tracer_provider=provider))
    async with client(app) as http:
        blocked = await http.post("/v1/chat/completions", json=chat("a forbidden word"))
        broken = await http.post("/v1/chat/completions", json=chat("crash please"))
    assert (blocked.status_code, broken.status_code) == (400, 500)
    requests, hooks = spans(exporter, "llm_guard.request"), spans(exporter, "llm_guard.hook")
    assert [(s.attributes["llm_guard.decision"], s.attributes["http.response.status_code"]) for s in requests] == [  # type: ignore[index]
        ("block", 400),
        ("error", 500),
    ]
    assert [s.attributes["llm_guard.outcome"] for s in hooks] == ["rejected", "error"]  # type: ignore[index]
    assert all(s.status.status_code == StatusCode.ERROR for s in requests + hooks)


async def test_the_request_span_is_a_child_of_the_servers_span_and_the_parent_of_the_apps(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("test")
    downstream = Downstream()

    async def app_with_a_span(scope: Any, receive: Any, send: Any) -> None:
        with tracer.start_as_current_span("app"):
            await downstream(scope, receive, send)

    guarded = LLMHookMiddleware(app_with_a_span, hooks=[Screen()], observer=OpenTelemetryObserver(provider))

    async def server(scope: Any, receive: Any, send: Any) -> None:  # as OpenTelemetry's ASGI middleware does
        with tracer.start_as_current_span("server"):
            await guarded(scope, receive, send)

    async with client(server) as http:
        assert (await http.post("/v1/chat/completions", json=chat("good morning"))).status_code == 200
    server_span, request, app = only(exporter, "server"), only(exporter, "llm_guard.request"), only(exporter, "app")
    assert request.parent is not None and request.parent.span_id == server_span.context.span_id
    assert app.parent is not None and app.parent.span_id == request.context.span_id


class Shout:
    async def async_post_call_streaming_hook(self, user_api_key_dict, response):
        for choice in response.get("choices", []):
            if choice["delta"].get("content"):
                choice["delta"]["content"] = choice["delta"]["content"].upper()


async def test_a_streamed_request_has_a_hook_span_per_chunk_inside_the_request_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    words = ("one", " two", " three")
    app = LLMHookMiddleware(Downstream(words=words), hooks=[Shout()], observer=OpenTelemetryObserver(provider))
    async with client(app) as http:
        response = await http.post("/v1/chat/completions", json=chat("hi", stream=True))
    assert "THREE" in response.text and response.text.rstrip().endswith("data: [DONE]")
    request, hooks = only(exporter, "llm_guard.request"), spans(exporter, "llm_guard.hook")
    assert len(hooks) == len(words) + 1  # each word's chunk and the finish chunk
    assert all(h.parent is not None and h.parent.span_id == request.context.span_id for h in hooks)
    assert all(h.attributes["llm_guard.stage"] == "streaming" for h in hooks)  # type: ignore[index]
    assert max(h.end_time for h in hooks) <= request.end_time  # type: ignore[type-var,operator]
    assert request.attributes["llm_guard.decision"] == "allow"  # type: ignore[index]


class SlowModeration:
    async def async_moderation_hook(self, data, user_api_key_dict, call_type):
        await asyncio.sleep(30)


async def test_a_client_that_leaves_ends_the_request_span_with_499_and_the_hook_span_cancelled(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = LLMHookMiddleware(
        Downstream(), hooks=[SlowModeration()], moderation="before", observer=OpenTelemetryObserver(provider)
    )
    script = Script(body_messages(orjson.dumps(chat("good morning"))))
    request_task = asyncio.ensure_future(app(http_scope(), script.receive, script.send))
    await asyncio.sleep(0.2)
    script.disconnect.set()
    await asyncio.wait_for(request_task, 5)
    request, hook = only(exporter, "llm_guard.request"), only(exporter, "llm_guard.hook")
    assert request.attributes["http.response.status_code"] == 499  # type: ignore[index]
    assert request.status.status_code == StatusCode.ERROR
    assert request.status.description == "the client left"
    assert hook.attributes["llm_guard.outcome"] == "cancelled"  # type: ignore[index]
    assert hook.parent is not None and hook.parent.span_id == request.context.span_id


async def test_no_span_holds_the_prompt_or_the_key(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    app = LLMHookMiddleware(Downstream(), hooks=[Screen()], observer=OpenTelemetryObserver(provider))
    async with client(app) as http:
        for prompt in ("the prompt pz-7731", "refuse the prompt pz-7731", "forbidden prompt pz-7731"):
            await http.post(
                "/v1/chat/completions", json=chat(prompt), headers={"authorization": "Bearer sk-key-8812"}
            )
    recorded = [
        f"{span.name} {span.status.description} {dict(span.attributes or {})}" for span in exporter.get_finished_spans()
    ]
    assert len(recorded) == 6
    assert not [text for text in recorded if "pz-7731" in text or "sk-key-8812" in text]


async def test_a_list_of_observers_feeds_prometheus_and_opentelemetry_alike(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    metrics = PrometheusObserver()
    app = LLMHookMiddleware(Downstream(), hooks=[Screen()], observer=[metrics, OpenTelemetryObserver(provider)])
    async with client(app) as http:
        await http.post("/v1/chat/completions", json=chat("good morning"))
        await http.post("/v1/chat/completions", json=chat("please refuse this"))
    assert metrics.registry.get_sample_value("llm_guard_requests_total", {"call_type": "completion"}) == 2
    assert metrics.registry.get_sample_value(
        "llm_guard_rejections_total", {"stage": "pre_call", "hook": "Screen", "kind": "refusal"}
    ) == 1
    assert len(spans(exporter, "llm_guard.request")) == 2
    assert len(spans(exporter, "llm_guard.hook")) == 2


class Recorder(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def request_started(self, call_type: str) -> None:
        self.events.append(("started", call_type))

    def request_parsed(self, call_type: str, model: str) -> None:
        self.events.append(("parsed", model))

    def hook_started(self, stage: str, hook: str) -> None:
        self.events.append(("hook", stage, hook))

    def hook_finished(self, stage: str, hook: str, seconds: float, outcome: str) -> None:
        self.events.append(("hook done", stage, hook, outcome))

    def request_finished(self, call_type: str, status: int, seconds: float) -> None:
        self.events.append(("finished", status))


async def test_every_observer_of_a_list_gets_every_event_in_order() -> None:
    first, second = Recorder(), Recorder()
    app = LLMHookMiddleware(Downstream(), hooks=[Screen()], observer=[first, second])
    async with client(app) as http:
        await http.post("/v1/chat/completions", json=chat("good morning", model="gpt-x"))
    expected = [
        ("started", "completion"),
        ("parsed", "gpt-x"),
        ("hook", "pre_call", "Screen"),
        ("hook done", "pre_call", "Screen", "ok"),
        ("finished", 200),
    ]
    assert first.events == second.events == expected


def test_observer_lists_are_checked_at_construction() -> None:
    with pytest.raises(TypeError, match="each observer must be an asgi_llm_guard.observe.Observer"):
        LLMHookMiddleware(Downstream(), observer=[Recorder(), object()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="or a list of them"):
        LLMHookMiddleware(Downstream(), observer="prometheus")  # type: ignore[arg-type]
    single = Recorder()
    assert LLMHookMiddleware(Downstream(), observer=[single]).observer is single
    assert LLMHookMiddleware(Downstream(), observer=[]).observer is None
    assert isinstance(LLMHookMiddleware(Downstream(), observer=[Recorder(), Recorder()]).observer, MultiObserver)


def test_without_opentelemetry_the_observer_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"pip install 'asgi-llm-guard\[otel\]'"):
        OpenTelemetryObserver()


async def test_a_refusal_raised_by_a_moderation_hook_is_refused_at_moderation(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    class Moderate:
        async def async_moderation_hook(self, data, user_api_key_dict, call_type):
            raise RejectRequest("no")

    app = LLMHookMiddleware(Downstream(), hooks=[Moderate()], observer=OpenTelemetryObserver(provider))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        response = await http.post("/v1/chat/completions", json=chat("good morning"))
    assert response.headers["x-llm-guard-rejected"] == "moderation"
    request, hook = only(exporter, "llm_guard.request"), only(exporter, "llm_guard.hook")
    assert (request.attributes["llm_guard.decision"], request.attributes["llm_guard.stage"]) == (  # type: ignore[index]
        "refuse",
        "moderation",
    )
    assert hook.attributes["llm_guard.outcome"] == "rejected"  # type: ignore[index]
    assert hook.parent is not None and hook.parent.span_id == request.context.span_id


class NoSecrets(CustomGuardrail):
    async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):
        if any("rm -rf" in text for text in inputs["texts"]):
            raise RejectRequest("I can't help with that.")
        return {**inputs, "texts": [text.replace("s3cr3t", "[REDACTED]") for text in inputs["texts"]]}


async def test_each_guardrail_decision_is_a_span_under_the_request(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    guard = NoSecrets(guardrail_name="no-secrets", event_hook="pre_call", default_on=True)
    app = LLMHookMiddleware(Downstream(), hooks=[guard], observer=[Recorder(), OpenTelemetryObserver(provider)])
    async with client(app) as http:
        await http.post("/v1/chat/completions", json=chat("good morning"))
        await http.post("/v1/chat/completions", json=chat("my s3cr3t pz-7731"))
        await http.post("/v1/chat/completions", json=chat("rm -rf / pz-7731"))
    requests, guardrails = spans(exporter, "llm_guard.request"), spans(exporter, "llm_guard.guardrail")
    assert [(g.attributes["llm_guard.guardrail"], g.attributes["llm_guard.stage"]) for g in guardrails] == [  # type: ignore[index]
        ("no-secrets", "pre_call")
    ] * 3
    assert [g.attributes["llm_guard.decision"] for g in guardrails] == ["allow", "modify", "block"]  # type: ignore[index]
    assert [g.status.status_code for g in guardrails] == [StatusCode.UNSET, StatusCode.UNSET, StatusCode.ERROR]
    hooks = spans(exporter, "llm_guard.hook")
    for request, guardrail in zip(requests, guardrails, strict=True):  # under its request's span, or its hook call
        under = request.context.span_id
        parents = {under} | {h.context.span_id for h in hooks if h.parent is not None and h.parent.span_id == under}
        assert guardrail.parent is not None and guardrail.parent.span_id in parents
    assert not [s for s in exporter.get_finished_spans() if "pz-7731" in str(dict(s.attributes or {}))]


async def test_a_limiter_429_names_its_limit_on_the_request_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    from asgi_llm_guard.contrib import ParallelRequestLimiter

    traces = OpenTelemetryObserver(provider)
    limiter = ParallelRequestLimiter(rpm_limit=1, observer=traces)
    app = LLMHookMiddleware(Downstream(), hooks=[limiter], observer=traces)
    async with client(app) as http:
        key = {"authorization": "Bearer sk-limited"}
        statuses = [(await http.post("/v1/chat/completions", json=chat("hi"), headers=key)).status_code for _ in "ab"]
    assert statuses == [200, 429]
    allowed, limited = spans(exporter, "llm_guard.request")
    assert "llm_guard.limit" not in (allowed.attributes or {})
    assert limited.attributes["llm_guard.limit"] == "rpm"  # type: ignore[index]
    assert limited.attributes["llm_guard.decision"] == "block"  # type: ignore[index]
