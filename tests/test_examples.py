"""The example services (examples/fastapi_app.py, examples/litestar_app.py) behave as the README says.

Both apps are driven in-process through httpx's ASGITransport with the built-in model; the upstream
forwarding mode is tested against a fake OpenAI-compatible upstream served by uvicorn, with
``OPENAI_BASE_URL`` set per test (the example reads it per request, so no module is re-imported).
ASGITransport buffers whole responses, so the chunk-by-chunk relay is tested with the example app under
uvicorn too.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from asgi_llm_guard import LLMHookMiddleware
from examples import fastapi_app, litestar_app
from tests.servers import serve

APPS = {"fastapi": fastapi_app.app, "litestar": litestar_app.app}

USER_PARAM_ERROR = {
    "error": {
        "message": "'user' param not passed in. 'enforce_user_param'=True",
        "type": "invalid_request_error",
        "param": "user",
        "code": "400",
    }
}


@pytest.fixture(autouse=True)
def builtin_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples must answer with the built-in model, whatever the developer's shell exports."""
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=sorted(APPS))
def app(request: pytest.FixtureRequest) -> Any:
    return APPS[request.param]


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


def chat(content: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": content}]
    return {"model": "gpt-3.5-turbo", "user": "ishaan-app", "messages": messages, **extra}


def anthropic(content: str, **extra: Any) -> dict[str, Any]:
    """An Anthropic Messages request; the end user is ``metadata.user_id`` there."""
    messages = [{"role": "user", "content": content}]
    return {"model": "claude-test", "max_tokens": 64, "metadata": {"user_id": "ishaan-app"},
            "messages": messages, **extra}


def named_events(text: str) -> list[tuple[str, Any]]:
    """The events of a stream of named events (Responses API, Anthropic): (``event:`` name, decoded ``data:``)."""
    events = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        names = [line[len("event: "):] for line in lines if line.startswith("event: ")]
        data = "\n".join(line[len("data: "):] for line in lines if line.startswith("data: "))
        if names or data:
            events.append((names[0] if names else "", json.loads(data)))
    return events


def sse_events(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body, JSON-decoded; ``"[DONE]"`` stays a string."""
    events = []
    for block in text.split("\n\n"):
        data = "\n".join(line[len("data: "):] for line in block.splitlines() if line.startswith("data: "))
        if data:
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# -- built-in model ------------------------------------------------------------------------------------------


async def test_chat_answers_with_the_builtin_model_and_the_alias_rewritten(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat("good morning good sir"))

    assert response.status_code == 200
    assert "x-llm-guard-rejected" not in response.headers
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini"  # the pre-call hook mapped the public alias
    assert body["choices"][0]["message"] == {
        "role": "assistant", "content": "You said: good morning good sir", "refusal": None
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}


async def test_hello_world_is_refused_as_a_normal_chat_completion(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat("Hello world"))

    assert response.status_code == 200
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-3.5-turbo"  # the model the client asked for
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "This is an invalid response"}
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_forbidden_word_is_a_400_openai_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat("tell me something forbidden"))

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    assert response.json() == {
        "error": {
            "message": "Your request contains a forbidden word.",
            "type": "invalid_request_error",
            "param": None,
            "code": "400",
        }
    }


async def test_moderation_hook_blocks_a_first_message_of_hello_world(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat("hello world"))

    assert response.status_code == 400
    assert response.headers["x-llm-guard-rejected"] == "moderation"
    assert response.json()["error"]["message"] == "Violated content safety policy"


@pytest.mark.parametrize("user", [None, "", 42])
async def test_request_without_user_is_a_400_naming_the_param(client: httpx.AsyncClient, user: Any) -> None:
    body = chat("good morning")
    if user is None:
        del body["user"]
    else:
        body["user"] = user

    response = await client.post("/v1/chat/completions", json=body)

    assert response.status_code == 400
    assert response.json() == USER_PARAM_ERROR


async def test_text_completion_answers(client: httpx.AsyncClient) -> None:
    request = {"model": "echo-1", "user": "u", "prompt": "hi there"}
    response = await client.post("/v1/completions", json=request)

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["choices"] == [
        {"text": "You said: hi there", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"]["total_tokens"] == 6


async def test_text_completion_refusal_is_a_normal_text_completion(client: httpx.AsyncClient) -> None:
    request = {"model": "echo-1", "user": "u", "prompt": "Hello world"}
    response = await client.post("/v1/completions", json=request)

    assert response.status_code == 200
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["model"] == "echo-1"
    assert body["choices"][0]["text"] == "This is an invalid response"


async def test_streamed_chat_is_openai_sse_with_usage(client: httpx.AsyncClient) -> None:
    request = chat("hi there", stream=True, stream_options={"include_usage": True})
    response = await client.post("/v1/chat/completions", json=request)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-4o-mini" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == (
        "You said: hi there"
    )
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}


async def test_streamed_text_completion(client: httpx.AsyncClient) -> None:
    request = {"model": "echo-1", "user": "u", "prompt": "hi there", "stream": True}
    response = await client.post("/v1/completions", json=request)

    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in events[:-1]) == "You said: hi there"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in events[:-1])  # include_usage was not asked for


async def test_streamed_refusal_is_sse(client: httpx.AsyncClient) -> None:
    request = chat("Hello world", stream=True, stream_options={"include_usage": True})
    response = await client.post("/v1/chat/completions", json=request)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "This is an invalid response"}
    assert events[0]["model"] == "gpt-3.5-turbo"
    assert [c["choices"][0]["finish_reason"] for c in events[:-1] if c["choices"]] == [None, "stop"]
    assert events[-2]["choices"] == [] and events[-2]["usage"]["total_tokens"] == 0


async def test_embeddings_are_deterministic_unit_vectors(client: httpx.AsyncClient) -> None:
    request = {"model": "echo-1", "user": "u", "input": ["a cat", "a dog", "a cat"]}
    response = await client.post("/v1/embeddings", json=request)

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    vectors = [row["embedding"] for row in body["data"]]
    assert [row["index"] for row in body["data"]] == [0, 1, 2]
    assert len(vectors[0]) == 8
    assert vectors[0] == vectors[2] != vectors[1]
    assert abs(sum(v * v for v in vectors[0]) - 1) < 1e-4
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}


async def test_embeddings_in_base64_as_the_openai_sdk_asks(client: httpx.AsyncClient) -> None:
    floats = await client.post("/v1/embeddings", json={"model": "e", "user": "u", "input": "a cat"})
    packed = await client.post("/v1/embeddings", json={"model": "e", "user": "u", "input": "a cat",
                                                       "encoding_format": "base64", "dimensions": 4})

    vector = struct.unpack("<4f", base64.b64decode(packed.json()["data"][0]["embedding"]))
    assert len(vector) == 4
    assert len(floats.json()["data"][0]["embedding"]) == 8


async def test_embeddings_of_hello_world_are_a_400_refusal(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/embeddings", json={"model": "e", "user": "u", "input": "Hello world"})

    assert response.status_code == 400  # refusals of non-chat call types are errors (docs/reference.md#refusals)
    assert response.json()["error"]["message"] == "This is an invalid response"


async def test_responses_api_answers_with_one_output_message(client: httpx.AsyncClient) -> None:
    request = {"model": "echo-1", "user": "u", "instructions": "be brief", "input": "hi there"}
    response = await client.post("/v1/responses", json=request)

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "response" and body["status"] == "completed" and body["model"] == "echo-1"
    assert body["id"].startswith("resp_")
    [message] = body["output"]
    assert (message["type"], message["role"], message["status"]) == ("message", "assistant", "completed")
    assert message["content"] == [
        {"type": "output_text", "text": "You said: hi there", "annotations": [], "logprobs": []}
    ]
    assert body["usage"]["input_tokens"] == 4 and body["usage"]["output_tokens"] == 4


async def test_responses_api_reads_the_last_user_message_of_an_item_list(client: httpx.AsyncClient) -> None:
    items = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "You said: first"},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "second"}]}]
    response = await client.post("/v1/responses", json={"model": "echo-1", "user": "u", "input": items})

    assert response.json()["output"][0]["content"][0]["text"] == "You said: second"


async def test_streamed_responses_api_is_its_named_events_in_order(client: httpx.AsyncClient) -> None:
    request = {"model": "echo-1", "user": "u", "input": "hi there", "stream": True}
    response = await client.post("/v1/responses", json=request)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = named_events(response.text)
    assert all(name == data["type"] for name, data in events)
    assert [name for name, _ in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert "".join(data["delta"] for name, data in events if name == "response.output_text.delta") == (
        "You said: hi there"
    )
    completed = events[-1][1]["response"]
    assert completed["status"] == "completed"
    assert completed["output"][0]["content"][0]["text"] == "You said: hi there"


async def test_responses_api_refusal_is_a_normal_response(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/responses", json={"model": "echo-1", "user": "u", "input": "Hello world"})

    assert response.status_code == 200
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    assert response.json()["output"][0]["content"][0]["text"] == "This is an invalid response"


async def test_messages_answers_as_an_anthropic_message(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/messages", json=anthropic("good morning", system="be brief"))

    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("msg_")
    assert {k: v for k, v in body.items() if k != "id"} == {
        "type": "message", "role": "assistant", "model": "claude-test",
        "content": [{"type": "text", "text": "You said: good morning"}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 4, "output_tokens": 4},
    }


async def test_streamed_messages_are_anthropic_named_events(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/messages", json=anthropic("hi there", stream=True))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in response.text  # Anthropic streams have none
    events = named_events(response.text)
    assert all(name == data["type"] for name, data in events)
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "ping", *["content_block_delta"] * 4,
        "content_block_stop", "message_delta", "message_stop",
    ]
    start = events[0][1]["message"]
    assert (start["content"], start["stop_reason"], start["model"]) == ([], None, "claude-test")
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"text_delta"}
    assert "".join(d["text"] for d in deltas) == "You said: hi there"
    assert events[-2][1] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                             "usage": {"output_tokens": 4}}


async def test_messages_without_messages_is_an_anthropic_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/messages", json={"model": "claude-test", "max_tokens": 8,
                                                       "metadata": {"user_id": "u"}, "messages": []})

    assert response.status_code == 400
    assert response.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                          "message": "messages: must be a non-empty list"}}


async def test_messages_hello_world_is_refused_as_a_normal_anthropic_message(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/messages", json=anthropic("Hello world"))

    assert response.status_code == 200
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    body = response.json()
    assert (body["type"], body["role"], body["model"], body["stop_reason"]) == (
        "message", "assistant", "claude-test", "end_turn")
    assert body["content"] == [{"type": "text", "text": "This is an invalid response"}]


async def test_streamed_messages_refusal_is_anthropic_events(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/messages", json=anthropic("Hello world", stream=True))

    assert response.status_code == 200
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    events = named_events(response.text)
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
        "message_stop",
    ]
    assert events[2][1]["delta"] == {"type": "text_delta", "text": "This is an invalid response"}


async def test_messages_forbidden_word_is_an_anthropic_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/messages", json=anthropic("tell me something forbidden"))

    assert response.status_code == 400
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    assert response.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                          "message": "Your request contains a forbidden word."}}


async def test_messages_without_metadata_user_id_is_an_anthropic_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/messages", json=anthropic("good morning", metadata={}))

    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "metadata.user_id" in body["error"]["message"]


async def test_models_list_passes_through_unguarded(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")  # no body, no user: GET is never guarded

    assert response.status_code == 200
    assert response.json()["data"][0]["id"] == "echo-1"


async def test_builtin_model_rejects_a_body_without_messages(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "echo-1", "user": "u"})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"


# -- upstream forwarding (OPENAI_BASE_URL) -------------------------------------------------------------------


RATE_LIMIT_HEADERS = {"retry-after": "20", "x-ratelimit-limit-requests": "60",
                      "x-ratelimit-remaining-requests": "0", "x-request-id": "req_123"}


@dataclass
class Upstream:
    """A fake OpenAI-compatible upstream and what it received."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    anthropic_headers: list[dict[str, str | None]] = field(default_factory=list)
    go_on: asyncio.Event = field(default_factory=asyncio.Event)  # releases the rest of a streamed answer
    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        async def chat_completions(request: Request) -> Response:
            body = await request.json()
            self.requests.append(body)
            self.authorizations.append(request.headers.get("authorization"))
            if body["model"] == "missing":
                error = {"message": "The model `missing` does not exist", "type": "invalid_request_error",
                         "param": "model", "code": "model_not_found"}
                return JSONResponse({"error": error}, status_code=404)
            if body["model"] == "limited":
                error = {"message": "Rate limit reached", "type": "requests", "param": None,
                         "code": "rate_limit_exceeded"}
                return JSONResponse({"error": error}, status_code=429, headers=RATE_LIMIT_HEADERS)
            if body["model"] == "gzipped":
                answer = json.dumps({"id": "chatcmpl-gz", "object": "chat.completion", "choices": []}).encode()
                hop_by_hop = {"keep-alive": "timeout=99", "proxy-authenticate": "Basic", "upgrade": "h2c"}
                return Response(gzip.compress(answer), media_type="application/json",
                                headers={"content-encoding": "gzip", **hop_by_hop, **RATE_LIMIT_HEADERS})
            if body.get("stream"):
                return StreamingResponse(self.events(body["model"]), media_type="text/event-stream")
            return JSONResponse({
                "id": "chatcmpl-upstream", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "from upstream"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            })

        async def models(request: Request) -> Response:
            self.authorizations.append(request.headers.get("authorization"))
            return JSONResponse({"object": "list", "data": [{"id": "upstream-model", "object": "model",
                                                             "created": 0, "owned_by": "test"}]})

        async def responses(request: Request) -> Response:
            body = await request.json()
            self.requests.append(body)
            return JSONResponse({"id": "resp_upstream", "object": "response", "status": "completed",
                                 "model": body["model"], "output": []}, headers={"request-id": "req_resp"})

        async def messages(request: Request) -> Response:
            body = await request.json()
            self.requests.append(body)
            self.anthropic_headers.append({name: request.headers.get(name) for name in
                                           ("x-api-key", "anthropic-version", "anthropic-beta", "authorization")})
            if body["model"] == "overloaded":
                error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                return JSONResponse(error, status_code=529, headers={"retry-after": "3", "request-id": "req_529"})
            if body.get("stream"):
                return StreamingResponse(self.anthropic_events(body["model"]), media_type="text/event-stream",
                                         headers={"request-id": "req_stream"})
            return JSONResponse({
                "id": "msg_upstream", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": "from upstream"}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 2},
            }, headers={"request-id": "req_msg", "anthropic-ratelimit-requests-remaining": "99"})

        return Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                                 Route("/v1/responses", responses, methods=["POST"]),
                                 Route("/v1/messages", messages, methods=["POST"]),
                                 Route("/v1/models", models)])

    async def anthropic_events(self, model: str) -> AsyncIterator[bytes]:
        def event(data: dict[str, Any]) -> bytes:
            return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()

        message = {"id": "msg_up", "type": "message", "role": "assistant", "model": model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}
        try:
            yield event({"type": "message_start", "message": message})
            yield event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            yield event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "first"}})
            await self.go_on.wait()
            yield event({"type": "content_block_delta", "index": 0,
                         "delta": {"type": "text_delta", "text": " second"}})
            yield event({"type": "content_block_stop", "index": 0})
            yield event({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                         "usage": {"output_tokens": 2}})
            yield event({"type": "message_stop"})
        finally:
            self.stream_closed.set()

    async def events(self, model: str) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            event = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
            return b"data: " + json.dumps(event).encode() + b"\n\n"

        try:
            yield chunk({"role": "assistant", "content": "first"})
            await self.go_on.wait()
            yield chunk({"content": " second"})
            yield chunk({}, "stop")
            yield b"data: [DONE]\n\n"
        finally:
            self.stream_closed.set()


@pytest.fixture
async def upstream(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Upstream]:
    fake = Upstream()
    async with serve(fake.app()) as base_url:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{base_url}/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-upstream")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", base_url)  # no /v1: the anthropic SDK's convention
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-upstream")
        yield fake


async def test_upstream_receives_the_hooked_request_and_its_answer_comes_back(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    response = await client.post("/v1/chat/completions", json=chat("good morning"))

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "from upstream"
    assert upstream.requests == [chat("good morning", model="gpt-4o-mini")]
    assert upstream.authorizations == ["Bearer sk-upstream"]


async def test_refused_requests_never_reach_the_upstream(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    refused = await client.post("/v1/chat/completions", json=chat("Hello world"))
    blocked = await client.post("/v1/chat/completions", json=chat("forbidden"))

    assert (refused.status_code, blocked.status_code) == (200, 400)
    assert upstream.requests == []


async def test_refused_messages_never_reach_the_anthropic_upstream(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    refused = await client.post("/v1/messages", json=anthropic("Hello world"))
    blocked = await client.post("/v1/messages", json=anthropic("forbidden"))

    assert (refused.status_code, blocked.status_code) == (200, 400)
    assert upstream.requests == []


async def test_upstream_errors_pass_through_with_their_status(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    response = await client.post("/v1/chat/completions", json=chat("hi", model="missing"))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


async def test_models_list_comes_from_the_upstream(client: httpx.AsyncClient, upstream: Upstream) -> None:
    response = await client.get("/v1/models")

    assert response.json()["data"][0]["id"] == "upstream-model"
    assert upstream.authorizations == ["Bearer sk-upstream"]


async def test_upstream_status_and_headers_reach_the_client(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    response = await client.post("/v1/chat/completions", json=chat("hi", model="limited"))

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    for name, value in RATE_LIMIT_HEADERS.items():
        assert response.headers[name] == value


async def test_upstream_body_encoding_and_hop_by_hop_headers_are_not_passed_on(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    # httpx decodes the upstream's gzip; passing its content-encoding (or content-length) on would make the
    # client decode plain JSON as gzip.
    response = await client.post("/v1/chat/completions", json=chat("hi", model="gzipped"))

    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert response.json()["id"] == "chatcmpl-gz"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    # headers of the upstream's own connection stay there
    assert "timeout=99" not in response.headers.get("keep-alive", "")
    assert "proxy-authenticate" not in response.headers and "upgrade" not in response.headers


async def test_responses_api_is_forwarded(client: httpx.AsyncClient, upstream: Upstream) -> None:
    response = await client.post("/v1/responses", json={"model": "gpt-3.5-turbo", "user": "u", "input": "hi"})

    assert response.status_code == 200
    assert response.json()["id"] == "resp_upstream"
    assert response.headers["request-id"] == "req_resp"
    assert upstream.requests == [{"model": "gpt-4o-mini", "user": "u", "input": "hi"}]


async def test_messages_are_forwarded_with_the_anthropic_key_and_version(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    response = await client.post("/v1/messages", json=anthropic("good morning"))

    assert response.status_code == 200
    assert response.json()["content"] == [{"type": "text", "text": "from upstream"}]
    assert response.headers["request-id"] == "req_msg"
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "99"
    assert upstream.requests == [anthropic("good morning")]
    assert upstream.anthropic_headers == [{"x-api-key": "sk-ant-upstream", "anthropic-version": "2023-06-01",
                                           "anthropic-beta": None, "authorization": None}]


async def test_messages_forward_the_clients_anthropic_version_and_beta(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    headers = {"anthropic-version": "2099-01-01", "anthropic-beta": "some-feature-2099", "x-api-key": "sk-client"}
    await client.post("/v1/messages", json=anthropic("hi"), headers=headers)

    # The service's own key goes upstream, never the client's.
    assert upstream.anthropic_headers == [{"x-api-key": "sk-ant-upstream", "anthropic-version": "2099-01-01",
                                           "anthropic-beta": "some-feature-2099", "authorization": None}]


async def test_anthropic_upstream_error_keeps_its_status_headers_and_envelope(
    client: httpx.AsyncClient, upstream: Upstream
) -> None:
    response = await client.post("/v1/messages", json=anthropic("hi", model="overloaded"))

    assert response.status_code == 529
    assert response.headers["retry-after"] == "3"
    assert response.headers["request-id"] == "req_529"
    assert response.json() == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


@pytest.mark.parametrize(("path", "body", "envelope"), [
    ("/v1/chat/completions", chat("hi"), "openai"),
    ("/v1/messages", anthropic("hi"), "anthropic"),
])
async def test_unreachable_upstream_is_a_502_that_does_not_name_it(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    path: str, body: dict[str, Any], envelope: str,
) -> None:
    async with serve(Starlette()) as base_url:
        pass  # the port is free again: nothing listens there now
    monkeypatch.setenv("OPENAI_BASE_URL", f"{base_url}/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", base_url)
    port = base_url.rsplit(":", 1)[1]

    with caplog.at_level(logging.WARNING, logger="examples.upstream"):
        response = await client.post(path, json=body)

    assert response.status_code == 502
    if envelope == "openai":
        assert response.json()["error"]["type"] == "api_error"
    else:
        assert response.json()["type"] == "error" and response.json()["error"]["type"] == "api_error"
    assert "127.0.0.1" not in response.text and port not in response.text  # internal address: log only
    assert any(base_url in record.getMessage() for record in caplog.records)


async def test_upstream_stream_is_relayed_chunk_by_chunk(app: Any, upstream: Upstream) -> None:
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with client.stream("POST", "/v1/chat/completions", json=chat("hi", stream=True)) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            received = ""
            chunks = response.aiter_text()
            with anyio.fail_after(5):  # the upstream holds the rest back until the first chunk arrived
                while "\n\n" not in received:
                    received += await chunks.__anext__()
            assert "first" in received and "second" not in received
            upstream.go_on.set()
            async for text in chunks:
                received += text

    events = sse_events(received)
    assert [e["choices"][0]["delta"].get("content") for e in events[:-1]] == ["first", " second", None]
    assert events[-1] == "[DONE]"
    assert upstream.requests[0]["model"] == "gpt-4o-mini"


async def test_anthropic_upstream_stream_is_relayed_event_by_event(app: Any, upstream: Upstream) -> None:
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with client.stream("POST", "/v1/messages", json=anthropic("hi", stream=True)) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["request-id"] == "req_stream"
            received = ""
            chunks = response.aiter_text()
            with anyio.fail_after(5):  # the upstream holds the rest back until the first delta arrived
                while "first" not in received:
                    received += await chunks.__anext__()
            assert "second" not in received
            upstream.go_on.set()
            async for text in chunks:
                received += text

    events = named_events(received)
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == "first second"


async def test_client_leaving_mid_stream_closes_the_upstream_stream(app: Any, upstream: Upstream) -> None:
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with client.stream("POST", "/v1/chat/completions", json=chat("hi", stream=True)) as response:
            async for text in response.aiter_text():
                assert "first" in text
                break  # leave before the upstream has finished

        with anyio.fail_after(5):
            await upstream.stream_closed.wait()
    assert not upstream.go_on.is_set()


# -- the handler as an import string -------------------------------------------------------------------------


async def test_handler_loads_from_its_import_string() -> None:
    async def echo_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app = LLMHookMiddleware(echo_app, hooks=["examples.hooks.proxy_handler_instance"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.post("/v1/chat/completions", json=chat("Hello world"))

    assert response.json()["choices"][0]["message"]["content"] == "This is an invalid response"
