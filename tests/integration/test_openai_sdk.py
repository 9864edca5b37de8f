"""docs/reference.md#refusals, #errors through a real uvicorn server, spoken to by the official ``openai`` SDK.

Refusals must parse as normal completions and streams (chat, text completion, Responses API), other call types
get a 400 the SDK raises as ``BadRequestError``, and the middleware's errors map to the SDK's typed exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
from fastapi import HTTPException

from asgi_llm_guard import LLMHookMiddleware
from tests.apps import RESPONSES_REFUSAL_EVENTS, Downstream, guarded
from tests.servers import serve

REFUSAL = "I can't help with that request."
MODEL = "gpt-test"


class RefuseHelloWorld:
    """Routes every request to another model (in place) and refuses any prompt holding "Hello world"."""

    def __init__(self) -> None:
        self.call_types: list[str] = []

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> Any:
        self.call_types.append(call_type)
        data["model"] = "routed-model"
        if "Hello world" in str(data):
            return REFUSAL
        data["messages"] = [{"role": "system", "content": "be brief"}, *data.get("messages", [])]
        return data


@asynccontextmanager
async def sdk(app: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with serve(app) as base_url:
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0) as client:
            yield client


@asynccontextmanager
async def refusing() -> AsyncIterator[tuple[openai.AsyncOpenAI, Downstream]]:
    app, down = guarded(RefuseHelloWorld())
    async with sdk(app) as client:
        yield client, down


HELLO = [{"role": "user", "content": "Hello world"}]


# -- chat completions --------------------------------------------------------------------------------------


async def test_chat_refusal_is_a_normal_completion() -> None:
    async with refusing() as (client, down):
        raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
        completion = raw.parse()

    assert raw.status_code == 200
    assert raw.headers["x-llm-guard-rejected"] == "pre_call"
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL  # the requested model, not the hook's "routed-model"
    assert len(completion.choices) == 1
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == REFUSAL
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 0
    assert down.received == []


async def test_chat_refusal_plain_create() -> None:
    async with refusing() as (client, _):
        completion = await client.chat.completions.create(model=MODEL, messages=HELLO)

    assert completion.choices[0].message.content == REFUSAL
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL


@pytest.mark.parametrize("include_usage", [False, True])
async def test_streamed_chat_refusal(include_usage: bool) -> None:
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    async with refusing() as (client, down):
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, stream=True, **extra
        )
        assert raw.headers["x-llm-guard-rejected"] == "pre_call"
        assert raw.headers["content-type"].startswith("text/event-stream")
        stream = raw.parse()
        chunks = [chunk async for chunk in stream]

    assert chunks, "the SDK yielded no chunks"
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == REFUSAL
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1
        assert usage_chunks[0] is chunks[-1]
        assert usage_chunks[0].choices == []
        assert usage_chunks[0].usage is not None and usage_chunks[0].usage.total_tokens == 0
    else:
        assert usage_chunks == []
    assert {c.model for c in chunks} == {MODEL}
    assert len({c.id for c in chunks}) == 1
    assert len({c.created for c in chunks}) == 1
    assert down.received == []


# -- text completions --------------------------------------------------------------------------------------


async def test_text_completion_refusal() -> None:
    async with refusing() as (client, down):
        raw = await client.completions.with_raw_response.create(model=MODEL, prompt="Hello world")
        completion = raw.parse()

    assert raw.headers["x-llm-guard-rejected"] == "pre_call"
    assert completion.object == "text_completion"
    assert completion.model == MODEL
    assert completion.choices[0].text == REFUSAL
    assert completion.choices[0].finish_reason == "stop"
    assert down.received == []


async def test_streamed_text_completion_refusal() -> None:
    async with refusing() as (client, down):
        stream = await client.completions.create(model=MODEL, prompt="Hello world", stream=True)
        chunks = [chunk async for chunk in stream]

    assert "".join(c.choices[0].text for c in chunks if c.choices) == REFUSAL
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert {c.model for c in chunks} == {MODEL}
    assert down.received == []


# -- call types refused with a 400 ---------------------------------------------------------------------------


async def test_embeddings_refusal_is_a_bad_request() -> None:
    async with refusing() as (client, down):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(model="text-embedding-3-small", input="Hello world")

    error = caught.value
    assert error.status_code == 400
    assert REFUSAL in error.message
    assert isinstance(error.body, dict) and error.body["message"] == REFUSAL
    assert error.response.headers["x-llm-guard-rejected"] == "pre_call"
    assert down.received == []


async def test_image_generation_refusal_is_a_bad_request() -> None:
    async with refusing() as (client, down):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.generate(model="dall-e-3", prompt="Hello world")

    error = caught.value
    assert REFUSAL in error.message
    assert isinstance(error.body, dict) and error.body["message"] == REFUSAL
    assert error.response.headers["x-llm-guard-rejected"] == "pre_call"
    assert down.received == []


# -- Responses API ------------------------------------------------------------------------------------------


async def test_responses_refusal() -> None:
    async with refusing() as (client, down):
        raw = await client.responses.with_raw_response.create(model=MODEL, input="Hello world")
        response = raw.parse()

    assert raw.headers["x-llm-guard-rejected"] == "pre_call"
    assert response.output_text == REFUSAL
    assert response.status == "completed"
    assert response.model == MODEL
    assert down.received == []


async def test_streamed_responses_refusal() -> None:
    async with refusing() as (client, down):
        stream = await client.responses.create(model=MODEL, input="Hello world", stream=True)
        events = [event async for event in stream]

    types = [event.type for event in events]
    assert types == RESPONSES_REFUSAL_EVENTS
    # typed events, not plain dicts
    assert all(type(event).__name__.startswith("Response") for event in events)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REFUSAL
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.status == "completed"
    assert completed.response.output_text == REFUSAL
    assert completed.response.model == MODEL
    assert down.received == []


# -- errors --------------------------------------------------------------------------------------------------


class SlowDown:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: Any, call_type: str) -> Any:
        raise HTTPException(429, detail="slow down", headers={"Retry-After": "2"})


class BuggyHook:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: Any, call_type: str) -> Any:
        return data["no such key"]


async def test_http_exception_429_is_a_rate_limit_error() -> None:
    app, down = guarded(SlowDown())
    async with sdk(app) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])

    error = caught.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "2"
    assert error.response.headers["x-llm-guard-rejected"] == "pre_call"
    assert isinstance(error.body, dict)
    assert error.body["message"] == "slow down"
    assert error.body["type"] == "rate_limit_error"
    assert error.code == "429"
    assert down.received == []


async def test_buggy_hook_is_an_internal_server_error() -> None:
    app, down = guarded(BuggyHook())
    async with sdk(app) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])

    error = caught.value
    assert error.status_code == 500
    assert isinstance(error.body, dict)
    assert error.body["message"] == "pre_call hook BuggyHook failed"
    assert error.body["type"] == "internal_server_error"
    assert "no such key" not in error.message  # the exception text is not exposed
    assert error.response.headers["x-llm-guard-rejected"] == "pre_call"
    assert down.received == []


async def test_enforce_user_param_without_user() -> None:
    hook = RefuseHelloWorld()
    app, down = guarded(hook, enforce_user_param=True)
    async with sdk(app) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        # with a user, the same middleware lets the request through
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], user="u-1"
        )

    error = caught.value
    assert error.param == "user"
    assert isinstance(error.body, dict)
    assert error.body["message"] == "'user' param not passed in. 'enforce_user_param'=True"
    assert hook.call_types == ["completion"]  # checked before any hook ran
    assert len(down.received) == 1
    assert completion.choices[0].message.content == "Hello from the model"


# -- pass-through --------------------------------------------------------------------------------------------


async def test_normal_request_reaches_the_downstream_rewritten() -> None:
    hook = RefuseHelloWorld()
    down = Downstream()
    app = LLMHookMiddleware(down, hooks=[hook])
    async with sdk(app) as client:
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "good morning"}], user="u-1"
        )

    assert hook.call_types == ["completion"]
    assert len(down.received) == 1
    received = down.received[0]
    assert received.path == "/v1/chat/completions"
    assert received.json == {
        "model": "routed-model",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "good morning"}],
        "user": "u-1",
    }
    assert received.headers["content-length"] == str(len(received.body))
    assert received.state.call_type == "completion"
    assert completion.id == "chatcmpl-down"
    assert completion.model == "routed-model"
    assert completion.choices[0].message.content == "Hello from the model"
    assert completion.usage is not None and completion.usage.total_tokens == 5


async def test_normal_stream_passes_through() -> None:
    hook = RefuseHelloWorld()
    app, down = guarded(hook)
    async with sdk(app) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "good morning"}], stream=True
        )
        chunks = [chunk async for chunk in stream]

    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the model"
    assert down.received[0].json["model"] == "routed-model"
    assert down.received[0].json["stream"] is True
