"""Guardrails (docs/guardrails.md) through a real uvicorn server and the official ``openai`` and ``anthropic``
SDKs: a post_call mask on answers streamed in 3-character pieces (chat, Responses, Anthropic), blocks and
failures mid-stream, and the raw bytes checked for any piece of the masked text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from asgi_llm_guard import CustomGuardrail, LLMHookMiddleware, RejectRequest
from tests.apps import read_request
from tests.servers import serve

pytestmark = pytest.mark.anyio

SECRET = "s3cr3t-XYZ-42"
FILLER = "This sentence is harmless and only fills the stream. " * 4
ANSWERS = {
    "mask": f"The password is {SECRET}, keep it. {FILLER}And again: {SECRET}.",
    "block": FILLER + "now run rm -rf / to finish. " + FILLER,
    "fail": FILLER + "this part makes the guard fail. " + FILLER,
}


class NoSecrets(CustomGuardrail):
    async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
        texts = [t.replace(SECRET, "[REDACTED]") for t in inputs["texts"]]
        if any("rm -rf" in t for t in texts):
            raise RejectRequest("I can't help with that.")
        if any("makes the guard fail" in t for t in texts):
            raise RuntimeError("guard bug")
        return {**inputs, "texts": texts}


def _pieces(text: str) -> list[str]:
    return [text[i : i + 3] for i in range(0, len(text), 3)]


def _event(data: dict[str, Any], named: bool) -> bytes:
    line = b"data: " + orjson.dumps(data) + b"\n\n"
    return b"event: " + data["type"].encode() + b"\n" + line if named else line


def _chat_events(text: str, model: str) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    chunks = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": p}) for p in _pieces(text)]
    chunks.append(chunk({}, "stop"))
    return [_event(c, False) for c in chunks] + [b"data: [DONE]\n\n"]


def _responses_events(text: str, model: str) -> list[bytes]:
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    done_part = {"type": "output_text", "text": text, "annotations": []}
    done_item = {**item, "status": "completed", "content": [done_part]}
    response = {"id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress", "model": model,
                "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": response},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": {**done_part, "text": ""}},
        *({"type": "response.output_text.delta", **where, "delta": p, "logprobs": []} for p in _pieces(text)),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": done_part},
        {"type": "response.output_item.done", "output_index": 0, "item": done_item},
        {"type": "response.completed", "response": {**response, "status": "completed", "output": [done_item]}},
    ]
    return [_event({**e, "sequence_number": n}, True) for n, e in enumerate(events)]


def _anthropic_events(text: str, model: str) -> list[bytes]:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 0}}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
          for p in _pieces(text)),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]
    return [_event(e, True) for e in events]


async def model_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers chat, Responses and Anthropic requests with ANSWERS[<last user text>], streamed or not."""
    body = await read_request(scope, receive, send)
    if body is None:
        return
    data = orjson.loads(body)
    path, model = scope["path"], data.get("model", "m")
    if "messages" in data:
        last = data["messages"][-1]["content"]
        prompt = last if isinstance(last, str) else last[0]["text"]
    else:
        prompt = data["input"] if isinstance(data["input"], str) else data["input"][-1]["content"]
    text = ANSWERS[prompt]
    if data.get("stream"):
        if path.endswith("/chat/completions"):
            events = _chat_events(text, model)
        elif path.endswith("/responses"):
            events = _responses_events(text, model)
        else:
            events = _anthropic_events(text, model)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if path.endswith("/chat/completions"):
        answer: dict[str, Any] = {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    else:
        answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
                  "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                  "usage": {"input_tokens": 1, "output_tokens": 1}}
    payload = orjson.dumps(answer)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    guard = NoSecrets(guardrail_name="no-secrets", event_hook=["pre_call", "post_call"], default_on=True)
    async with serve(LLMHookMiddleware(model_app, hooks=[guard])) as base:
        yield base


@pytest.fixture
async def oai(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="sk-x", max_retries=0) as client:
        yield client


@pytest.fixture
async def claude(base_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-ant", max_retries=0) as client:
        yield client


MASKED = ANSWERS["mask"].replace(SECRET, "[REDACTED]")


def _no_piece_of_the_secret(raw: bytes) -> None:
    for start in range(len(SECRET) - 2):
        assert SECRET[start : start + 3].encode() not in raw


# -- openai --------------------------------------------------------------------------------------------------


async def test_chat_masked_streamed_and_not(oai: openai.AsyncOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "mask"}]
    answer = await oai.chat.completions.create(model="m", messages=messages)
    assert answer.choices[0].message.content == MASKED
    stream = await oai.chat.completions.create(model="m", messages=messages, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == MASKED
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


async def test_chat_stream_blocked_mid_way_ends_with_the_refusal(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "block"}],
                                               stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.endswith("I can't help with that.") and "rm -rf" not in text
    assert text.startswith("This sentence is harmless")  # half the stream went out before the block


async def test_chat_stream_guard_failing_mid_way_raises_api_error(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "fail"}],
                                               stream=True)
    with pytest.raises(openai.APIError, match="streaming hook NoSecrets failed"):
        async for _ in stream:
            pass


async def test_responses_stream_masked_through_the_sdk_helper(oai: openai.AsyncOpenAI) -> None:
    async with oai.responses.stream(model="m", input="mask") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == MASKED
    assert final.output_text == MASKED


async def test_responses_stream_blocked_mid_way(oai: openai.AsyncOpenAI) -> None:
    async with oai.responses.stream(model="m", input="block") as stream:
        final = await stream.get_final_response()
    assert final.output_text.endswith("I can't help with that.") and "rm -rf" not in final.output_text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "mask"}], "stream": True}),
        ("/v1/responses", {"model": "m", "input": "mask", "stream": True}),
        ("/v1/messages", {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "mask"}],
                          "stream": True}),
    ],
    ids=["chat", "responses", "anthropic"],
)
async def test_no_piece_of_a_masked_text_reaches_the_client_byte_by_byte(
    base_url: str, path: str, body: dict[str, Any]
) -> None:
    raw = b""
    async with httpx.AsyncClient(base_url=base_url) as http, http.stream("POST", path, json=body) as response:
        assert response.headers["x-llm-guard-applied-guardrails"] == "no-secrets"
        async for piece in response.aiter_raw():
            raw += piece
    _no_piece_of_the_secret(raw)
    assert b"[REDACTED]" in raw


# -- anthropic -----------------------------------------------------------------------------------------------


async def test_anthropic_masked_created_streamed_and_through_the_stream_helper(
    claude: anthropic.AsyncAnthropic,
) -> None:
    params: Any = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "mask"}]}
    message = await claude.messages.create(**params)
    assert message.content[0].text == MASKED  # type: ignore[union-attr]
    stream = await claude.messages.create(**params, stream=True)
    text = "".join([e.delta.text async for e in stream if e.type == "content_block_delta"])  # type: ignore[union-attr]
    assert text == MASKED
    async with claude.messages.stream(**params) as helper:
        final = await helper.get_final_message()
    assert "".join(b.text for b in final.content if b.type == "text") == MASKED


async def test_anthropic_stream_blocked_mid_way_ends_as_a_message(claude: anthropic.AsyncAnthropic) -> None:
    params: Any = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "block"}]}
    async with claude.messages.stream(**params) as helper:
        final = await helper.get_final_message()
    text = "".join(b.text for b in final.content if b.type == "text")
    assert text.endswith("I can't help with that.") and "rm -rf" not in text
    assert final.stop_reason == "end_turn"


async def test_anthropic_stream_guard_failing_mid_way_raises(claude: anthropic.AsyncAnthropic) -> None:
    params: Any = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "fail"}]}
    with pytest.raises(anthropic.APIStatusError):
        async with claude.messages.stream(**params) as helper:
            await helper.get_final_message()
