"""The example apps under a real uvicorn server, spoken to by the official ``openai`` and ``anthropic`` SDKs, and
run as the README says (``python examples/fastapi_app.py``, ``python examples/litestar_app.py``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from examples import fastapi_app, litestar_app
from tests.servers import serve

ROOT = Path(__file__).resolve().parents[2]


APPS = {"fastapi": fastapi_app.app, "litestar": litestar_app.app}


@pytest.fixture(autouse=True)
def builtin_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=sorted(APPS))
async def base_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    async with serve(APPS[request.param]) as url:
        yield url


@pytest.fixture
async def sdk(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0) as client:
        yield client


@pytest.fixture
async def claude(base_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-ant-test", max_retries=0) as client:
        yield client


def said(text: str) -> dict[str, Any]:
    """The arguments of an Anthropic Messages call saying ``text`` as the end user ``ishaan-app``."""
    return {"model": "claude-test", "max_tokens": 64, "metadata": {"user_id": "ishaan-app"},
            "messages": [{"role": "user", "content": text}]}


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    async with serve(fastapi_app.app) as base_url:
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0) as client:
            yield client


async def test_normal_completion(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-3.5-turbo", user="ishaan-app", messages=[{"role": "user", "content": "good morning"}]
    )

    assert completion.choices[0].message.content == "You said: good morning"
    assert completion.model == "gpt-4o-mini"
    assert completion.usage is not None and completion.usage.total_tokens == 6


async def test_refusal_parses_as_a_normal_chat_completion(client: openai.AsyncOpenAI) -> None:
    response = await client.chat.completions.with_raw_response.create(
        model="gpt-3.5-turbo", user="ishaan-app", messages=[{"role": "user", "content": "Hello world"}]
    )
    completion = response.parse()

    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "This is an invalid response"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-3.5-turbo"


async def test_streamed_refusal_parses_as_a_normal_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-3.5-turbo", user="ishaan-app", messages=[{"role": "user", "content": "Hello world"}],
        stream=True, stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "This is an invalid response"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert {c.model for c in chunks} == {"gpt-3.5-turbo"}


async def test_streamed_answer(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="echo-1", user="ishaan-app", messages=[{"role": "user", "content": "hi there"}], stream=True
    )

    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == "You said: hi there"


async def test_forbidden_prompt_raises_bad_request(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="gpt-3.5-turbo", user="ishaan-app", messages=[{"role": "user", "content": "forbidden"}]
        )

    assert caught.value.status_code == 400
    assert "Your request contains a forbidden word." in caught.value.message
    assert caught.value.body == {"message": "Your request contains a forbidden word.",
                                 "type": "invalid_request_error", "param": None, "code": "400"}


async def test_missing_user_raises_bad_request_naming_the_param(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "hi"}])

    assert caught.value.param == "user"


async def test_embeddings_through_the_sdk(client: openai.AsyncOpenAI) -> None:
    result = await client.embeddings.create(model="echo-1", user="ishaan-app", input=["a cat", "a cat"])

    assert len(result.data) == 2
    assert result.data[0].embedding == pytest.approx(result.data[1].embedding)
    assert len(result.data[0].embedding) == 8


async def test_responses_create(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.responses.create(model="echo-1", user="ishaan-app", input="good morning")

    assert response.output_text == "You said: good morning"
    assert response.status == "completed"
    assert response.usage is not None and response.usage.output_tokens == 4


async def test_responses_create_streamed(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.responses.create(model="echo-1", user="ishaan-app", input="good morning", stream=True)
    events = [event async for event in stream]

    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "You said: good morning"


async def test_responses_stream_helper(sdk: openai.AsyncOpenAI) -> None:
    async with sdk.responses.stream(model="echo-1", user="ishaan-app", input="good morning") as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()

    assert "".join(deltas) == "You said: good morning"
    assert final.output_text == "You said: good morning"


async def test_responses_refusal_through_the_stream_helper(sdk: openai.AsyncOpenAI) -> None:
    async with sdk.responses.stream(model="echo-1", user="ishaan-app", input="Hello world") as stream:
        final = await stream.get_final_response()

    assert final.output_text == "This is an invalid response"


async def test_messages_create(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(**said("good morning"))

    assert message.content[0].type == "text" and message.content[0].text == "You said: good morning"
    assert (message.role, message.stop_reason, message.model) == ("assistant", "end_turn", "claude-test")
    assert message.usage.output_tokens == 4


async def test_messages_create_streamed(claude: anthropic.AsyncAnthropic) -> None:
    stream = await claude.messages.create(**said("good morning"), stream=True)
    events = [event async for event in stream]

    assert [e.type for e in events][:2] == ["message_start", "content_block_start"]
    assert [e.type for e in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert "".join(d.text for d in deltas if d.type == "text_delta") == "You said: good morning"


async def test_messages_stream_helper(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(**said("good morning")) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()

    assert text == "You said: good morning"
    assert final.content[0].type == "text" and final.content[0].text == "You said: good morning"
    assert final.stop_reason == "end_turn"


async def test_messages_refusal_parses_through_the_stream_helper(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(**said("Hello world")) as stream:
        final = await stream.get_final_message()

    assert final.content[0].type == "text" and final.content[0].text == "This is an invalid response"
    assert final.model == "claude-test"


async def test_messages_forbidden_raises_bad_request(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await claude.messages.create(**said("forbidden"))

    assert caught.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                            "message": "Your request contains a forbidden word."}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("script", ["examples/fastapi_app.py", "examples/litestar_app.py"])
def test_the_example_runs_as_a_script(tmp_path: Path, script: str) -> None:
    port = free_port()
    forwarding = ("OPENAI_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY")
    env = {k: v for k, v in os.environ.items() if k not in forwarding}
    env["PORT"] = str(port)
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        command = [sys.executable, script]  # as the README says, from the repository root
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, f"the example exited:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"the example did not answer in time:\n{log.read_text()}"
                try:
                    if client.get("/v1/models").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)

            response = client.post("/v1/chat/completions", json={
                "model": "gpt-3.5-turbo", "user": "ishaan-app", "temperature": 0.2,
                "messages": [{"role": "user", "content": "good morning good sir"}],
            })
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "You said: good morning good sir"
    assert "chat completion for end user ishaan-app" in log.read_text()  # read from request.state.llm_guard
