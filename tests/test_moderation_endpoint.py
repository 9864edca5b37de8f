from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from asgi_llm_guard.contrib import ModerationEndpointHook
from asgi_llm_guard.contrib.moderation_endpoint import ModerationFlagged
from asgi_llm_guard.errors import GuardError, RejectRequest
from tests.servers import serve

pytestmark = pytest.mark.anyio

CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence")


def _result(scores: dict[str, float], flagged: set[str]) -> dict[str, Any]:
    return {
        "flagged": bool(flagged),
        "categories": {name: name in flagged for name in CATEGORIES},
        "category_scores": {name: scores.get(name, 0.001) for name in CATEGORIES},
    }


async def moderations(request: Request) -> Response:
    """Answers like OpenAI's /v1/moderations; the input text picks the behaviour."""
    body = await request.json()
    request.app.state.requests.append({"headers": dict(request.headers), "body": body})
    text = body["input"] if isinstance(body["input"], str) else " ".join(body["input"])
    if "error500" in text:
        return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
    if "notjson" in text:
        return PlainTextResponse("<html>oops</html>")
    if "slow" in text:
        # Sleep 2 s, but stop as soon as the client has gone so the server shuts down promptly.
        for _ in range(40):
            if await request.is_disconnected():
                return Response(status_code=499)
            await asyncio.sleep(0.05)
    if "kill" in text:
        result = _result({"violence": 0.93, "harassment": 0.2}, {"violence"})
    elif "borderline" in text:
        result = _result({"violence": 0.4}, set())
    else:
        result = _result({}, set())
    return JSONResponse({"id": "modr-123", "model": body.get("model"), "results": [result]})


def make_app() -> Starlette:
    app = Starlette(routes=[Route("/v1/moderations", moderations, methods=["POST"])])
    app.state.requests = []
    return app


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """The base URL (``.../v1``) of a real moderation server, and the list of requests it received."""
    app = make_app()
    async with serve(app) as base_url:
        yield f"{base_url}/v1", app.state.requests


def _chat(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}


async def _check(hook: ModerationEndpointHook, data: dict[str, Any], call_type: str = "completion") -> Any:
    """The hook's return value (``None`` when the request passes); the hook's client is closed after."""
    moderate: Any = hook.async_moderation_hook
    try:
        return await moderate(data, None, call_type)
    finally:
        await hook.aclose()


async def test_flagged_text_is_rejected(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = endpoint
    with pytest.raises(RejectRequest) as info:
        await _check(ModerationEndpointHook(url, api_key="k"), _chat("I will kill the process"))
    assert isinstance(info.value, ModerationFlagged)
    assert info.value.categories == ["violence"]
    assert "kill" not in info.value.message
    assert info.value.message == "Your request was blocked by a content policy."


async def test_message_may_name_the_categories(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = endpoint
    hook = ModerationEndpointHook(url, api_key="k", message="Blocked ({categories}).")
    with pytest.raises(RejectRequest, match=r"^Blocked \(violence\)\.$"):
        await _check(hook, _chat("kill"))


async def test_clean_text_passes(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, requests = endpoint
    assert await _check(ModerationEndpointHook(url, api_key="k"), _chat("hello there")) is None
    assert len(requests) == 1


async def test_every_text_of_the_request_is_sent(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, requests = endpoint
    data = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
        ],
    }
    await _check(ModerationEndpointHook(url, api_key="k"), data)
    assert requests[0]["body"]["input"] == "be brief\nhello"


async def test_request_carries_authorization_and_model(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, requests = endpoint
    hook = ModerationEndpointHook(url, api_key="sk-test", model="text-moderation-stable")
    await _check(hook, {"input": "hello"}, "embeddings")
    assert requests[0]["headers"]["authorization"] == "Bearer sk-test"
    assert requests[0]["body"] == {"model": "text-moderation-stable", "input": "hello"}


async def test_api_key_defaults_to_the_environment(
    endpoint: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, requests = endpoint
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    await _check(ModerationEndpointHook(url), _chat("hello"))
    assert requests[0]["headers"]["authorization"] == "Bearer sk-env"
    assert requests[0]["body"]["model"] == "omni-moderation-latest"


async def test_no_key_no_authorization_header(
    endpoint: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, requests = endpoint
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    await _check(ModerationEndpointHook(url), _chat("hello"))
    assert "authorization" not in requests[0]["headers"]


async def test_threshold_flags_a_score_below_the_endpoint_boolean(
    endpoint: tuple[str, list[dict[str, Any]]],
) -> None:
    url, _ = endpoint
    assert await _check(ModerationEndpointHook(url, api_key="k"), _chat("borderline")) is None
    hook = ModerationEndpointHook(url, api_key="k", thresholds={"violence": 0.3})
    with pytest.raises(RejectRequest) as info:
        await _check(hook, _chat("borderline"))
    assert isinstance(info.value, ModerationFlagged) and info.value.categories == ["violence"]


async def test_threshold_above_the_score_overrides_a_flagged_boolean(
    endpoint: tuple[str, list[dict[str, Any]]],
) -> None:
    url, _ = endpoint
    hook = ModerationEndpointHook(url, api_key="k", thresholds={"violence": 0.95})
    assert await _check(hook, _chat("kill")) is None


async def test_flagged_category_outside_categories_passes(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = endpoint
    hook = ModerationEndpointHook(url, api_key="k", categories=["hate", "sexual"])
    assert await _check(hook, _chat("kill")) is None
    with pytest.raises(RejectRequest):
        await _check(ModerationEndpointHook(url, api_key="k", categories=["violence"]), _chat("kill"))


async def test_server_error_fails_closed(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = endpoint
    with pytest.raises(GuardError) as info:
        await _check(ModerationEndpointHook(url, api_key="k"), _chat("error500"))
    assert info.value.status_code == 503
    assert info.value.message == "moderation endpoint unavailable"


async def test_server_error_fails_open_with_a_warning(
    endpoint: tuple[str, list[dict[str, Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = endpoint
    hook = ModerationEndpointHook(url, api_key="k", fail_open=True)
    with caplog.at_level(logging.WARNING, logger="asgi_llm_guard.contrib"):
        assert await _check(hook, _chat("error500 kill")) is None
    [record] = [r for r in caplog.records if r.name == "asgi_llm_guard.contrib"]
    assert record.levelno == logging.WARNING
    assert "500" in record.getMessage()
    assert "kill" not in record.getMessage()


async def test_non_json_answer_is_an_endpoint_error(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = endpoint
    with pytest.raises(GuardError) as info:
        await _check(ModerationEndpointHook(url, api_key="k"), _chat("notjson"))
    assert info.value.status_code == 503
    assert await _check(ModerationEndpointHook(url, api_key="k", fail_open=True), _chat("notjson")) is None


async def test_slow_endpoint_fails_closed_within_the_timeout(
    endpoint: tuple[str, list[dict[str, Any]]],
) -> None:
    url, _ = endpoint
    hook = ModerationEndpointHook(url, api_key="k", timeout=0.2)
    started = time.monotonic()
    with pytest.raises(GuardError) as info:
        await _check(hook, _chat("slow kill"))
    assert time.monotonic() - started < 1.0
    assert info.value.status_code == 503
    assert info.value.type == "timeout_error"


async def test_slow_endpoint_fails_open_within_the_timeout(
    endpoint: tuple[str, list[dict[str, Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = endpoint
    hook = ModerationEndpointHook(url, api_key="k", timeout=0.2, fail_open=True)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="asgi_llm_guard.contrib"):
        assert await _check(hook, _chat("slow kill")) is None
    assert time.monotonic() - started < 1.0
    assert any(r.levelno == logging.WARNING and r.name == "asgi_llm_guard.contrib" for r in caplog.records)


async def test_unreachable_endpoint_follows_fail_open() -> None:
    app = make_app()
    async with serve(app) as base_url:
        pass  # the port is free again once the server has stopped
    with pytest.raises(GuardError):
        await _check(ModerationEndpointHook(f"{base_url}/v1", api_key="k"), _chat("hello"))
    hook = ModerationEndpointHook(f"{base_url}/v1", api_key="k", fail_open=True)
    assert await _check(hook, _chat("hello")) is None


async def test_empty_text_makes_no_call(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, requests = endpoint
    hook = ModerationEndpointHook(url, api_key="k")
    await _check(hook, {"model": "gpt-4o", "messages": [{"role": "user", "content": ""}]})
    await _check(hook, {"model": "m", "input": [1, 2, 3]}, "embeddings")
    await _check(hook, {"model": "m", "input": "   \n "}, "moderation")
    await _check(hook, {}, "completion")
    assert requests == []


async def test_call_types_filter(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, requests = endpoint
    hook = ModerationEndpointHook(url, api_key="k", call_types={"completion"})
    await _check(hook, {"input": "kill"}, "embeddings")
    assert requests == []


async def test_one_client_per_hook_reused_and_closed(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, requests = endpoint
    hook = ModerationEndpointHook(url, api_key="k")
    await hook.async_moderation_hook(_chat("one"), None, "completion")
    client = hook._client
    await hook.async_moderation_hook(_chat("two"), None, "completion")
    assert hook._client is client and client is not None
    await hook.aclose()
    assert client.is_closed
    assert len(requests) == 2


async def test_given_client_is_used_and_left_open(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    url, requests = endpoint
    async with httpx.AsyncClient() as client:
        async with ModerationEndpointHook(url, api_key="k", client=client) as hook:
            with pytest.raises(RejectRequest):
                await hook.async_moderation_hook(_chat("kill"), None, "completion")
        assert not client.is_closed
    assert len(requests) == 1


async def test_transport_is_used() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"results": [{"flagged": True}]})

    hook = ModerationEndpointHook(
        "https://moderation.test/v1/", api_key="k", transport=httpx.MockTransport(handler)
    )
    with pytest.raises(RejectRequest) as info:
        await _check(hook, _chat("anything"))
    assert str(seen[0].url) == "https://moderation.test/v1/moderations"
    assert isinstance(info.value, ModerationFlagged) and info.value.categories == ["flagged"]


def test_attributes_the_middleware_reads() -> None:
    hook = ModerationEndpointHook(api_key="k", timeout=1.5, fail_open=True)
    assert hook.timeout == 1.5 and hook.fail_open is True
    default = ModerationEndpointHook(api_key="k")
    assert default.timeout == 5.0 and default.fail_open is False
    assert default.url == "https://api.openai.com/v1/moderations"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"base_url": "api.openai.com"}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"timeout": "5"}, ValueError),
        ({"fail_open": "yes"}, TypeError),
        ({"thresholds": {"violence": 2}}, ValueError),
        ({"thresholds": [("violence", 0.5)]}, TypeError),
        ({"categories": ["hate"], "thresholds": {"violence": 0.5}}, ValueError),
        ({"categories": 3}, TypeError),
        ({"call_types": ["chat"]}, ValueError),
        ({"message": ""}, TypeError),
        ({"client": object()}, TypeError),
    ],
)
def test_construction_errors(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        ModerationEndpointHook(**{"api_key": "k", **kwargs})


# -- through the middleware: the hook as a user runs it -------------------------------------------------------


async def _through_guard(hook: ModerationEndpointHook, text: str, **options: Any) -> tuple[httpx.Response, list[Any]]:
    from asgi_llm_guard import LLMHookMiddleware

    from .apps import Downstream, client

    down = Downstream()
    try:
        async with client(LLMHookMiddleware(down, hooks=[hook], **options)) as c:
            response = await c.post("/v1/chat/completions", json=_chat(text))
    finally:
        await hook.aclose()
    return response, down.received


@pytest.mark.parametrize("moderation", ["parallel", "before"])
async def test_guard_refuses_what_the_endpoint_flags(endpoint: tuple[str, list[dict[str, Any]]],
                                                     moderation: str) -> None:
    base_url, _ = endpoint
    response, received = await _through_guard(ModerationEndpointHook(base_url, api_key="sk-mod"),
                                              "I will kill the process", moderation=moderation)
    assert response.status_code == 200
    assert response.headers["x-llm-guard-rejected"] == "moderation"
    assert "kill" not in response.json()["choices"][0]["message"]["content"]
    if moderation == "before":
        assert received == []


async def test_guard_passes_what_the_endpoint_does_not_flag(endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    base_url, _ = endpoint
    response, received = await _through_guard(ModerationEndpointHook(base_url, api_key="sk-mod"), "good morning")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello from the model"
    assert len(received) == 1


@pytest.mark.parametrize("fail_open", [False, True])
async def test_guard_with_a_slow_endpoint_obeys_timeout_and_fail_open(
    endpoint: tuple[str, list[dict[str, Any]]], fail_open: bool
) -> None:
    base_url, _ = endpoint
    hook = ModerationEndpointHook(base_url, api_key="sk-mod", timeout=0.2, fail_open=fail_open)
    started = time.perf_counter()
    response, _ = await _through_guard(hook, "slow please")
    assert time.perf_counter() - started < 1.5
    assert response.status_code == (200 if fail_open else 503)


@pytest.mark.parametrize("fail_open", [False, True])
async def test_guard_with_a_failing_endpoint_obeys_fail_open(
    endpoint: tuple[str, list[dict[str, Any]]], fail_open: bool
) -> None:
    base_url, _ = endpoint
    response, _ = await _through_guard(ModerationEndpointHook(base_url, api_key="sk-mod", fail_open=fail_open),
                                       "error500")
    assert response.status_code == (200 if fail_open else 503)


async def test_as_a_guardrail_it_sends_the_texts_and_the_tool_call_arguments(
    endpoint: tuple[str, list[dict[str, Any]]],
) -> None:
    """Regression: as a guardrail the hook gets texts without tool-call arguments; it must still send them."""
    from asgi_llm_guard import LLMHookMiddleware

    from .apps import Downstream, client

    base_url, requests = endpoint
    hook = ModerationEndpointHook(base_url, api_key="sk-mod")
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"q\": \"hello\"}"}}]},
    ]
    try:
        async with client(LLMHookMiddleware(Downstream(), hooks=[hook])) as c:
            response = await c.post("/v1/chat/completions", json={"model": "m", "messages": messages})
    finally:
        await hook.aclose()
    assert response.headers["x-llm-guard-applied-guardrails"] == "ModerationEndpointHook"
    assert requests[0]["body"]["input"] == "be brief\n{\"q\": \"hello\"}"
