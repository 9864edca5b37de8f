"""No output fail-open, as the official ``openai`` SDK sees it over real servers (uvicorn with httptools and with
h11, hypercorn): answers the SDK parses whatever their label reach the client only through the hooks, and an answer
the hooks cannot read is an error the SDK raises, never the unchecked bytes (tests/test_output_checked.py has the
exact messages)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import openai
import orjson
import pytest

from asgi_llm_guard import LLMHookMiddleware

from ..apps import chat_chunk, chat_completion, read_request
from ..audio import make_wav
from ..servers import serve, serve_hypercorn

BOM = b"\xef\xbb\xbf"
ANSWER = chat_completion("gpt-test", "the secret is 1234")
ANSWER["choices"][0]["logprobs"] = {"content": [{"token": "the", "logprob": -math.inf, "bytes": None,
                                                 "top_logprobs": []}]}


def server(name: str) -> Callable[[Any], AbstractAsyncContextManager[str]]:
    if name == "hypercorn":
        return serve_hypercorn
    http = name.split("-")[1]
    return lambda app: serve(app, http=http)


SERVERS = ["uvicorn-httptools", "uvicorn-h11", "hypercorn"]


class Redact:
    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        if isinstance(response, dict) and set(response) == {"text"}:
            response["text"] = response["text"].replace("1234", "[REDACTED]")
            return None
        response["choices"][0]["message"]["content"] = "the secret is [REDACTED]"
        return None

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        delta = response["choices"][0]["delta"]
        if isinstance(delta.get("content"), str):
            delta["content"] = delta["content"].replace("1234", "[REDACTED]")
        return response


async def mislabelled(scope: Any, receive: Any, send: Any) -> None:
    """Answers as a careless Python service might: JSON from json.dumps (``-Infinity``) after a BOM, labelled
    text/plain; a stream labelled text/plain; a transcription as plain text; image bytes."""
    body = await read_request(scope, receive, send)
    if body is None:
        return
    path = scope["path"]
    plain = [(b"content-type", b"text/plain; charset=utf-8")]
    if path.endswith("/images/generations"):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"image/png")]})
        await send({"type": "http.response.body", "body": b"\x89PNG\r\n\x1a\nsecret 1234"})
        return
    if path.endswith("/audio/transcriptions"):
        await send({"type": "http.response.start", "status": 200, "headers": plain})
        await send({"type": "http.response.body", "body": b"the secret is 1234\n"})
        return
    if orjson.loads(body).get("stream"):
        await send({"type": "http.response.start", "status": 200, "headers": plain})
        for chunk in (chat_chunk("gpt-test", "the secret"), chat_chunk("gpt-test", " is 1234"),
                      chat_chunk("gpt-test", None, "stop")):
            await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": plain})
    await send({"type": "http.response.body", "body": BOM + json.dumps(ANSWER).encode()})


async def sdk(name: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with server(name)(LLMHookMiddleware(mislabelled, hooks=[Redact()])) as base_url:
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0) as client:
            yield client


@pytest.mark.parametrize("name", SERVERS)
async def test_a_bom_first_text_plain_answer_with_minus_infinity_reaches_the_sdk_redacted(name: str) -> None:
    async for client in sdk(name):
        completion = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], logprobs=True
        )
        assert completion.choices[0].message.content == "the secret is [REDACTED]"
        assert completion.choices[0].logprobs is not None
        assert completion.choices[0].logprobs.content is not None
        assert completion.choices[0].logprobs.content[0].logprob == -math.inf


@pytest.mark.parametrize("name", SERVERS)
async def test_a_text_plain_stream_reaches_the_sdk_redacted(name: str) -> None:
    async for client in sdk(name):
        stream = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
        assert text == "the secret is [REDACTED]"


@pytest.mark.parametrize("name", SERVERS)
async def test_image_bytes_the_hook_cannot_read_are_an_error_the_sdk_raises(name: str) -> None:
    async for client in sdk(name):
        with pytest.raises(openai.APIStatusError) as raised:
            await client.images.generate(prompt="a cat")
        assert raised.value.status_code == 502
        assert "1234" not in raised.value.response.text


async def test_a_text_transcription_reaches_the_sdk_redacted() -> None:
    async for client in sdk("uvicorn-httptools"):
        text = await client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", make_wav(0.1), "audio/wav"), response_format="text"
        )
        assert text == "the secret is [REDACTED]\n"
