"""GenericGuardrailAPI against a fake guard service on a real port (uvicorn), with the guarded app served by
uvicorn too and driven by the official openai SDK."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import orjson
import pytest

from asgi_llm_guard import LLMHookMiddleware, UserAPIKeyAuth
from asgi_llm_guard.contrib import GenericGuardrailAPI
from tests.apps import Downstream, read_request
from tests.servers import serve

pytestmark = pytest.mark.anyio


class FakeGuardService:
    """The Generic Guardrail API: "block" → BLOCKED, "secret" → GUARDRAIL_INTERVENED (masked), "slow" → hangs,
    "garbage" → an answer off the contract; everything else NONE. Records each request body and api key."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any], str | None]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = await read_request(scope, receive, send)
        if body is None:
            return
        data = orjson.loads(body)
        headers = dict(scope["headers"])
        key = headers.get(b"x-api-key")
        self.received.append((scope["path"], data, key.decode() if key else None))
        texts = data.get("texts") or []
        joined = " ".join(texts)
        if "slow" in joined:
            await asyncio.sleep(30)
        if "garbage" in joined:
            answer: dict[str, Any] = {"action": "MAYBE"}
        elif "block" in joined:
            answer = {"action": "BLOCKED", "blocked_reason": "Blocked by corp policy."}
        elif "secret" in joined:
            answer = {"action": "GUARDRAIL_INTERVENED", "texts": [t.replace("secret", "******") for t in texts]}
        else:
            answer = {"action": "NONE"}
        payload = orjson.dumps(answer)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def _stack(guard: GenericGuardrailAPI, down: Downstream | None = None) -> AsyncIterator[openai.AsyncOpenAI]:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        return UserAPIKeyAuth(api_key="hash-1", user_id="u-1", team_id="t-1")

    app = LLMHookMiddleware(down or Downstream(), hooks=[guard], auth=auth)
    async with serve(app) as base:
        sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-x", max_retries=0)
        try:
            yield sdk
        finally:
            await sdk.close()
            await guard.aclose()


@asynccontextmanager
async def _service() -> AsyncIterator[tuple[FakeGuardService, str]]:
    fake = FakeGuardService()
    async with serve(fake) as base:
        yield fake, base


async def test_none_intervened_and_blocked_through_the_openai_sdk() -> None:
    async with _service() as (fake, base):
        down = Downstream(words=("a secret", " answer"))
        guard = GenericGuardrailAPI(base, api_key="guard-key", guardrail_name="corp", default_on=True,
                                    event_hook=["pre_call", "post_call"])
        async with _stack(guard, down) as sdk:
            ok = await sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            masked = await sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "my secret"}])
            blocked = await sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "please block"}])
            stream = await sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert ok.choices[0].message.content == "a ****** answer"
    assert masked.choices[0].message.content == "a ****** answer"
    assert down.received[1].json["messages"][0]["content"] == "my ******"
    assert blocked.choices[0].message.content == "Blocked by corp policy."
    assert len(down.received) == 3  # the blocked prompt never reached the app
    assert streamed == "a ****** answer"
    path, body, key = fake.received[0]
    assert path == "/beta/litellm_basic_guardrail_api" and key == "guard-key"
    assert body["input_type"] == "request" and body["texts"] == ["hi"] and body["model"] == "m"
    assert body["structured_messages"] == [{"role": "user", "content": "hi"}]
    assert body["request_data"] == {"user_api_key_hash": "hash-1", "user_api_key_user_id": "u-1",
                                    "user_api_key_team_id": "t-1"}
    assert fake.received[1][1]["input_type"] == "response"


async def test_an_unreachable_service_fails_closed_with_a_clear_503_or_open_when_asked() -> None:
    base = f"http://127.0.0.1:{_closed_port()}"
    guard = GenericGuardrailAPI(base, guardrail_name="corp", default_on=True)
    async with _stack(guard) as sdk:
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    assert caught.value.response.json()["error"]["message"] == "guardrail corp unavailable"

    down = Downstream()
    guard = GenericGuardrailAPI(base, guardrail_name="corp", default_on=True, fail_open=True)
    async with _stack(guard, down) as sdk:
        answer = await sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Hello from the model"


async def test_a_slow_service_is_bounded_by_timeout() -> None:
    async with _service() as (_, base):
        guard = GenericGuardrailAPI(base, guardrail_name="corp", default_on=True, timeout=0.2)
        async with _stack(guard) as sdk:
            with pytest.raises(openai.APIStatusError) as caught:
                await sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "slow"}])
        assert caught.value.status_code == 503
        assert caught.value.response.json()["error"]["type"] == "timeout_error"

        down = Downstream()
        guard = GenericGuardrailAPI(base, guardrail_name="corp", default_on=True, timeout=0.2, fail_open=True)
        async with _stack(guard, down) as sdk:
            answer = await sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "slow"}])
        assert answer.choices[0].message.content == "Hello from the model"


async def test_an_answer_off_contract_is_a_503_not_a_pass() -> None:
    async with _service() as (_, base):
        guard = GenericGuardrailAPI(base, guardrail_name="corp", default_on=True)
        async with _stack(guard) as sdk:
            with pytest.raises(openai.APIStatusError) as caught:
                await sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "garbage"}])
        assert caught.value.status_code == 503


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match="api_base"):
        GenericGuardrailAPI("guard:8080")
    with pytest.raises(ValueError, match="timeout"):
        GenericGuardrailAPI("http://guard", timeout=0)
    with pytest.raises(TypeError, match="fail_open"):
        GenericGuardrailAPI("http://guard", fail_open="yes")  # type: ignore[arg-type]
    assert GenericGuardrailAPI("http://guard/").api_base == "http://guard/beta/litellm_basic_guardrail_api"
