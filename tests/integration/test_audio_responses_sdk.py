"""The official openai SDK against a real server for the audio and Responses API routes (issue 7)."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from asgi_llm_guard import LLMHookMiddleware

from ..audio import make_wav
from ..servers import serve

uploads: list[dict[str, Any]] = []


async def transcriptions(request: Request) -> JSONResponse:
    async with request.form() as form:
        upload: Any = form["file"]
        uploads.append({"prompt": form.get("prompt"), "bytes": await upload.read()})
        return JSONResponse({"text": f"heard with prompt: {form.get('prompt')}"})


def named(payload: dict[str, Any]) -> bytes:
    return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


async def responses(request: Request) -> Any:
    body = await request.json()
    words = ["the ", "quick ", "fox"]
    response = {"id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress", "model": body["model"],
                "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
    item = {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}

    async def events() -> Any:
        seq = 0

        def ev(payload: dict[str, Any]) -> bytes:
            nonlocal seq
            payload["sequence_number"] = seq
            seq += 1
            return named(payload)

        yield ev({"type": "response.created", "response": response})
        yield ev({"type": "response.output_item.added", "output_index": 0, "item": item})
        yield ev({"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0, "content_index": 0,
                  "part": part})
        for word in words:
            yield ev({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                      "content_index": 0, "delta": word})
        text = "".join(words)
        done_part = {"type": "output_text", "text": text, "annotations": []}
        yield ev({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0, "content_index": 0,
                  "text": text})
        yield ev({"type": "response.content_part.done", "item_id": "msg_1", "output_index": 0, "content_index": 0,
                  "part": done_part})
        done_item = {**item, "status": "completed", "content": [done_part]}
        yield ev({"type": "response.output_item.done", "output_index": 0, "item": done_item})
        yield ev({"type": "response.completed", "response": {**response, "status": "completed",
                                                             "output": [done_item]}})

    if body.get("stream"):
        return StreamingResponse(events(), media_type="text/event-stream")
    return JSONResponse({**response, "status": "completed", "output": [
        {**item, "status": "completed", "content": [{"type": "output_text", "text": "".join(words),
                                                     "annotations": []}]}]})


downstream = Starlette(routes=[Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
                              Route("/v1/responses", responses, methods=["POST"])])


class Hooks:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        if call_type == "audio_transcription":
            data["prompt"] = "Spell it: ASGI."
        return data

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        if response.get("type") == "response.output_text.delta":
            response["delta"] = response["delta"].upper()
            if response["delta"] == "FOX":
                response["delta"] = "FOX!"
        return response


async def test_transcription_through_a_hook_that_rewrites_the_prompt() -> None:
    uploads.clear()
    wav = make_wav(0.1)
    async with serve(LLMHookMiddleware(downstream, hooks=[Hooks()])) as base:
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0) as client:
            result = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav, "audio/wav"),
                                                              prompt="original")
    assert result.text == "heard with prompt: Spell it: ASGI."
    assert uploads == [{"prompt": "Spell it: ASGI.", "bytes": wav}]


async def test_streaming_hook_upper_cases_responses_text_deltas() -> None:
    async with serve(LLMHookMiddleware(downstream, hooks=[Hooks()])) as base:
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0) as client:
            stream = await client.responses.create(model="gpt-4o", input="hi", stream=True)
            deltas = []
            kinds = []
            async for event in stream:
                kinds.append(event.type)
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
    assert deltas == ["THE ", "QUICK ", "FOX!"]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"


async def test_responses_stream_error_midway_raises_api_error() -> None:
    class Breaks:
        async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
            if response.get("delta") == "quick ":
                raise ValueError("no")
            return None

    async with serve(LLMHookMiddleware(downstream, hooks=[Breaks()])) as base:
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0) as client:
            stream = await client.responses.create(model="gpt-4o", input="hi", stream=True)
            events = []
            with pytest.raises(openai.APIError) as raised:  # docs/reference.md#stream-errors
                async for event in stream:
                    events.append(event.type)
    assert raised.value.message == "streaming hook Breaks failed"
    assert events == ["response.created", "response.output_item.added", "response.content_part.added",
                      "response.output_text.delta"]
