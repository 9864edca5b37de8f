"""Refusal formats, exactly as docs/reference.md#refusals describes them, for every call type, streamed and not."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from asgi_llm_guard import RejectRequest
from asgi_llm_guard.sse import SSEParser

from .apps import RESPONSES_REFUSAL_EVENTS, chat, client, guarded

MESSAGE = 'Refused: "quoted" \n\ndata: [DONE]\n\n<b>'


class Refuse:
    def __init__(self, how: str = "return") -> None:
        self.how = how

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        data["model"] = "some-internal-model"  # a refusal still names the model the client asked for
        if self.how == "raise":
            raise RejectRequest(MESSAGE)
        return MESSAGE


def events(body: bytes) -> list[Any]:
    parsed = SSEParser().feed(body)
    assert b"".join(event.raw for event in parsed) == body
    return [event for event in parsed]


def data_of(body: bytes) -> list[Any]:
    out = []
    for event in events(body):
        out.append("[DONE]" if event.is_done else orjson.loads(event.data))
    return out


@pytest.mark.parametrize("how", ["return", "raise"])
async def test_chat_refusal_is_a_normal_completion(how: str) -> None:
    app, down = guarded(Refuse(how))
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    body = response.json()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    del body["id"], body["created"]
    assert body == {
        "object": "chat.completion",
        "model": "gpt-test",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": MESSAGE},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
    assert down.received == []


@pytest.mark.parametrize("include_usage", [False, True])
async def test_streamed_chat_refusal(include_usage: bool) -> None:
    app, _ = guarded(Refuse())
    request = chat(stream=True, stream_options={"include_usage": include_usage})
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    chunks = data_of(response.content)
    assert chunks[-1] == "[DONE]"
    chunks = chunks[:-1]
    assert len(chunks) == (3 if include_usage else 2)
    assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]}
    assert {chunk["created"] for chunk in chunks} == {chunks[0]["created"]}
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["model"] == "gpt-test" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": MESSAGE}
    assert chunks[1]["choices"][0]["delta"] == {}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]
    if include_usage:
        assert chunks[2]["choices"] == [] and chunks[2]["usage"]["total_tokens"] == 0


async def test_text_completion_refusal() -> None:
    app, _ = guarded(Refuse())
    async with client(app) as c:
        response = await c.post("/v1/completions", json={"model": "davinci", "prompt": "x"})
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["model"] == "davinci"
    assert body["choices"] == [{"text": MESSAGE, "index": 0, "logprobs": None, "finish_reason": "stop"}]


async def test_streamed_text_completion_refusal() -> None:
    app, _ = guarded(Refuse())
    async with client(app) as c:
        response = await c.post("/v1/completions", json={"model": "davinci", "prompt": "x", "stream": True})
    chunks = data_of(response.content)
    assert chunks[-1] == "[DONE]"
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == [MESSAGE, ""]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, "stop"]
    assert all(c["object"] == "text_completion" and c["model"] == "davinci" for c in chunks[:-1])


async def test_responses_refusal() -> None:
    app, _ = guarded(Refuse())
    async with client(app) as c:
        response = await c.post("/v1/responses", json={"model": "gpt-4o", "input": "hi"})
    body = response.json()
    assert body["object"] == "response" and body["status"] == "completed" and body["model"] == "gpt-4o"
    assert [item["type"] for item in body["output"]] == ["message"]
    assert body["output"][0]["role"] == "assistant"
    assert body["output"][0]["content"][0]["type"] == "output_text"
    assert body["output"][0]["content"][0]["text"] == MESSAGE
    assert body["usage"]["total_tokens"] == 0


async def test_streamed_responses_refusal_uses_named_events() -> None:
    app, _ = guarded(Refuse())
    async with client(app) as c:
        response = await c.post("/v1/responses", json={"model": "gpt-4o", "input": "hi", "stream": True})
    parsed = events(response.content)
    names = [event.event for event in parsed]
    assert names == RESPONSES_REFUSAL_EVENTS
    payloads = [orjson.loads(event.data) for event in parsed]
    assert [p["type"] for p in payloads] == names
    assert [p["sequence_number"] for p in payloads] == list(range(8))
    assert payloads[3]["delta"] == MESSAGE
    assert payloads[-1]["response"]["status"] == "completed"
    assert payloads[-1]["response"]["model"] == "gpt-4o"
    assert payloads[-1]["response"]["output"][0]["content"][0]["text"] == MESSAGE


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"model": "e", "input": "x"}),
        ("/v1/images/generations", {"model": "dall-e", "prompt": "x"}),
        ("/v1/moderations", {"input": "x"}),
    ],
)
async def test_other_call_types_get_a_400_with_the_message(path: str, body: dict) -> None:
    app, _ = guarded(Refuse())
    async with client(app) as c:
        response = await c.post(path, json=body)
    assert response.status_code == 400
    assert response.json() == {
        "error": {"message": MESSAGE, "type": "invalid_request_error", "param": None, "code": "400"}
    }
    assert response.headers["x-llm-guard-rejected"] == "pre_call"


async def test_message_cannot_inject_frames_or_headers() -> None:
    app, _ = guarded(Refuse())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat(stream=True))
    parsed = events(response.content)
    assert len(parsed) == 3  # content, finish, [DONE]: the message's "\n\ndata: " stayed inside its JSON string
    assert set(response.headers) <= {
        "content-type",
        "content-length",
        "cache-control",
        "x-accel-buffering",
        "x-llm-guard-rejected",
    }
