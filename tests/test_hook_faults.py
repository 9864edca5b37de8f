"""Faults of hooks and of what they call: a ``CancelledError`` a hook raises of its own accord, slow sync hooks, a
hanging ``auth`` callable, an app that swallows its cancellation, and a provider SDK's error raised inside a hook.

Scripted ASGI (as in ``test_faults.py``), and real timing with wide gaps where the defect is about time.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from fastapi import HTTPException
from starlette.exceptions import HTTPException as StarletteHTTPException

from asgi_llm_guard import CustomGuardrail, LLMHookMiddleware, UserAPIKeyAuth, race, streaming
from asgi_llm_guard.observe import Observer

from .apps import Script, body_messages, chat, chat_chunk, http_scope, sse
from .asgi_checks import Failures, assert_legal, assert_no_new_tasks
from .servers import serve
from .test_faults import JSON_STEPS, SSE_STEPS, START_SSE, App, body, drive, error_of, guard, stream_payloads


async def raise_a_foreign_cancellation() -> None:
    """What a hook does when it awaits a task or future that something else cancelled (another client's
    disconnect, a shared cache refresh): ``CancelledError`` in a task nobody cancelled."""
    shared = asyncio.get_running_loop().create_future()
    shared.cancel()
    await shared


# -- a CancelledError of the hook's own is that hook's failure ----------------------------------------------------


class PreCallCancelled:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        await raise_a_foreign_cancellation()


class ModerationCancelled:
    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        await raise_a_foreign_cancellation()


class QuietModeration:
    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        await asyncio.sleep(0.01)


class SuccessCancelled:
    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        await raise_a_foreign_cancellation()


class ChunkCancelledOnSecond:
    def __init__(self) -> None:
        self.calls = 0

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.calls += 1
        if self.calls == 2:
            await raise_a_foreign_cancellation()
        return None


class IteratorCancelledOnSecond:
    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: AsyncIterator[dict], request_data: dict
    ) -> AsyncIterator[dict]:
        count = 0
        async for chunk in response:
            count += 1
            if count == 2:
                await raise_a_foreign_cancellation()
            yield chunk


@pytest.mark.parametrize(
    ("hooks", "stage", "name"),
    [
        ([PreCallCancelled()], "pre_call", "PreCallCancelled"),
        ([ModerationCancelled()], "moderation", "ModerationCancelled"),
        ([QuietModeration(), ModerationCancelled()], "moderation", "ModerationCancelled"),
        ([SuccessCancelled()], "post_call", "SuccessCancelled"),
    ],
    ids=["pre-call", "moderation", "one-of-two-moderation-hooks", "post-call"],
)
@pytest.mark.parametrize("moderation", ["parallel", "before"])
async def test_a_hook_raising_cancelled_error_of_its_own_is_its_failure(
    hooks: list[Any], stage: str, name: str, moderation: str
) -> None:
    # Regression: the CancelledError escaped the middleware, the server answered its own plain-text 500 and the
    # failure hooks never ran.
    down = App(JSON_STEPS)
    app, failures = guard(down, *hooks, moderation=moderation)
    script = await drive(app)
    assert error_of(script, 500)["message"] == f"{stage} hook {name} failed"
    assert [type(e) for e in failures.exceptions] == [asyncio.CancelledError]


@pytest.mark.parametrize("hook", [ChunkCancelledOnSecond, IteratorCancelledOnSecond])
async def test_a_streaming_hook_raising_cancelled_error_of_its_own_ends_the_stream_with_its_error(hook: type) -> None:
    down = App(SSE_STEPS)
    app, failures = guard(down, hook())
    script = await drive(app, chat(stream=True))
    assert_legal(script.sent)
    payloads = stream_payloads(script.body)
    assert payloads[-1] == "[DONE]"
    assert payloads[-2]["error"]["message"] == f"streaming hook {hook.__name__} failed"
    assert [type(e) for e in failures.exceptions] == [asyncio.CancelledError]


async def test_a_failure_hook_raising_cancelled_error_is_logged_and_the_answer_stands() -> None:
    class FailureCancelled:
        async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                               user_api_key_dict: Any) -> None:
            await raise_a_foreign_cancellation()

    down = App(JSON_STEPS)
    app, failures = guard(down, PreCallCancelled(), FailureCancelled())
    script = await drive(app)
    assert error_of(script, 500)["message"] == "pre_call hook PreCallCancelled failed"
    assert len(failures.exceptions) == 1  # the failure hook after the broken one still ran


async def test_an_auth_callable_raising_cancelled_error_is_an_authentication_failure() -> None:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        await raise_a_foreign_cancellation()
        return UserAPIKeyAuth()

    down = App(JSON_STEPS)
    app, failures = guard(down, auth=auth)
    script = await drive(app)
    assert error_of(script, 500)["message"] == "Authentication failed."
    assert down.state == "not called"
    assert [type(e) for e in failures.exceptions] == [asyncio.CancelledError]


@pytest.mark.parametrize("moderation", [[], [QuietModeration()]], ids=["plain", "raced-with-moderation"])
async def test_an_app_raising_cancelled_error_of_its_own_is_its_failure(moderation: list[Any]) -> None:
    down = App([("sleep", 0.02), ("raise", asyncio.CancelledError())])
    app, failures = guard(down, *moderation)
    script = await drive(app)
    assert error_of(script, 500)["message"] == "The downstream app failed while handling the request."
    assert [type(e) for e in failures.exceptions] == [asyncio.CancelledError]


async def test_a_request_the_server_cancels_is_cancelled_whatever_the_hook_does() -> None:
    # The other side of the rule: a cancellation of the request itself (server shutdown) is never taken for a
    # hook's failure and answered.
    started = asyncio.Event()

    class Slow:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            started.set()
            await asyncio.sleep(30)

    down = App(JSON_STEPS)
    failures = Failures()
    app = LLMHookMiddleware(down, hooks=[Slow(), failures])
    script = Script(body_messages(orjson.dumps(chat())))
    task = asyncio.ensure_future(app(http_scope(), script.receive, script.send))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert script.sent == []
    assert down.state == "not called"


@pytest.mark.parametrize("options", [{"hook_timeout": 5.0}, {"hook_timeout": None}], ids=["bounded", "unbounded"])
async def test_a_bounded_hook_raising_cancelled_error_of_its_own_is_its_failure(options: dict[str, Any]) -> None:
    down = App(JSON_STEPS)
    app, failures = guard(down, PreCallCancelled(), SuccessCancelled(), **options)
    script = await drive(app)
    assert error_of(script, 500)["message"] == "pre_call hook PreCallCancelled failed"
    assert [type(e) for e in failures.exceptions] == [asyncio.CancelledError]


# -- a provider SDK's error inside a hook is a dependency failure, not the client's -------------------------------


def openai_client(status: int, body: dict[str, Any]) -> Any:
    """The real ``openai`` SDK, its HTTP calls answered locally (a paid service: the one thing faked)."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    transport = httpx.MockTransport(answer)
    return openai.AsyncOpenAI(
        api_key="sk-the-services-own-key", max_retries=0, http_client=httpx.AsyncClient(transport=transport)
    )


BAD_KEY = {"error": {"message": "Incorrect API key provided: sk-the-s***-key.", "type": "invalid_request_error",
                     "param": None, "code": "invalid_api_key"}}
RATE_LIMITED = {"error": {"message": "Rate limit reached for omni-moderation", "type": "requests", "param": None,
                          "code": "rate_limit_exceeded"}}


class ModeratesWithOpenAI:
    """A pre-call hook that asks OpenAI's moderation endpoint with the service's own key."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.client = openai_client(status, body)

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        await self.client.moderations.create(input=str(data.get("messages")))
        return None


@pytest.mark.parametrize(("status", "body"), [(401, BAD_KEY), (429, RATE_LIMITED)], ids=["bad-key", "rate-limited"])
async def test_an_openai_error_inside_a_hook_is_a_502_not_the_clients_401(
    status: int, body: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: the SDK's AuthenticationError carries status_code 401 and its message, and the client was told
    # that its own key was bad ("Incorrect API key provided: sk-the-s***-key.").
    down = App(JSON_STEPS)
    app, failures = guard(down, ModeratesWithOpenAI(status, body))
    script = await drive(app)
    error = error_of(script, 502)
    assert error == {"message": "pre_call hook ModeratesWithOpenAI failed: upstream dependency error",
                     "type": "internal_server_error", "param": None, "code": "502"}
    assert b"sk-" not in script.body and b"Rate limit" not in script.body
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"(a call it made, status {status})" in message for message in errors), errors
    assert any(body["error"]["message"] in message for message in errors)  # the operator's to fix
    assert down.state == "not called"
    assert [getattr(e, "status_code", None) for e in failures.exceptions] == [status]


def sdk_errors() -> list[BaseException]:

    request = httpx.Request("POST", "https://api.example.com/v1/x")
    response = httpx.Response(401, request=request, json=BAD_KEY)
    return [
        openai.AuthenticationError("Incorrect API key provided", response=response, body=BAD_KEY),
        openai.PermissionDeniedError("no access", response=httpx.Response(403, request=request), body=None),
        openai.APIConnectionError(request=request),
        anthropic.AuthenticationError("invalid x-api-key", response=response, body=None),
        httpx.HTTPStatusError("401 Unauthorized", request=request, response=response),
        httpx.ConnectError("connection refused", request=request),
    ]


class Raises:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class PostCallRaises(Raises):
    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        raise self.exc


class ChunkRaises(Raises):
    calls = 0

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.calls += 1
        if self.calls == 2:  # after the stream started
            raise self.exc
        return None


class ModerationRaisesIt(Raises):
    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        raise self.exc


@pytest.mark.parametrize("index", range(6), ids=["openai-401", "openai-403", "openai-connection", "anthropic-401",
                                                 "httpx-status", "httpx-connect"])
@pytest.mark.parametrize(("hook", "stage"), [(ModerationRaisesIt, "moderation"), (PostCallRaises, "post_call")])
async def test_every_sdk_error_inside_a_hook_is_a_dependency_failure(index: int, hook: type, stage: str) -> None:
    down = App(JSON_STEPS)
    app, failures = guard(down, hook(sdk_errors()[index]))
    script = await drive(app)
    assert error_of(script, 502)["message"] == f"{stage} hook {hook.__name__} failed: upstream dependency error"
    assert len(failures.exceptions) == 1


async def test_an_sdk_error_mid_stream_ends_the_stream_with_a_dependency_error() -> None:
    down = App(SSE_STEPS)
    app, _ = guard(down, ChunkRaises(sdk_errors()[0]))
    script = await drive(app, chat(stream=True))
    assert_legal(script.sent)
    payloads = stream_payloads(script.body)
    assert payloads[-1] == "[DONE]"
    assert payloads[-2]["error"]["code"] == "502"
    assert payloads[-2]["error"]["message"] == "streaming hook ChunkRaises failed: upstream dependency error"


class OwnError(Exception):
    status_code = 401
    detail = "your key is revoked"


@pytest.mark.parametrize(
    ("exc", "status", "message"),
    [
        (HTTPException(401, "bad key"), 401, "bad key"),
        (StarletteHTTPException(429, "slow down"), 429, "slow down"),
        (OwnError(), 401, "your key is revoked"),
    ],
    ids=["fastapi", "starlette", "own-class"],
)
async def test_http_exceptions_raised_on_purpose_keep_their_status(exc: Exception, status: int, message: str) -> None:
    down = App(JSON_STEPS)
    app, _ = guard(down, ModerationRaisesIt(exc))
    script = await drive(app)
    assert error_of(script, status)["message"] == message


async def test_litellms_rejected_request_error_keeps_its_meaning() -> None:

    class RejectedRequestError(openai.BadRequestError):  # as litellm.exceptions defines it
        pass


    request = httpx.Request("POST", "http://x")
    exc = RejectedRequestError("rejected by policy", response=httpx.Response(400, request=request), body=None)
    down = App(JSON_STEPS)
    app, _ = guard(down, ModerationRaisesIt(exc))
    script = await drive(app)
    assert error_of(script, 400)["message"] == "rejected by policy"


async def test_a_failure_hook_raising_an_sdk_error_does_not_replace_the_answer() -> None:
    class FailureCallsOpenAI:
        async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                               user_api_key_dict: Any) -> None:
            raise sdk_errors()[0]

    down = App(JSON_STEPS)
    app = LLMHookMiddleware(down, hooks=[PreCallCancelled(), FailureCallsOpenAI()])
    script = await drive(app)
    assert error_of(script, 500)["message"] == "pre_call hook PreCallCancelled failed"


async def test_an_auth_callable_whose_key_store_fails_is_a_502() -> None:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        raise sdk_errors()[4]  # httpx.HTTPStatusError from the key store

    down = App(JSON_STEPS)
    app, _ = guard(down, auth=auth)
    script = await drive(app)
    assert error_of(script, 502)["message"] == "Authentication failed: upstream dependency error."


async def test_an_app_letting_an_sdk_error_escape_is_a_502() -> None:
    down = App([("raise", sdk_errors()[0])])
    app, _ = guard(down)
    script = await drive(app)
    assert error_of(script, 502)["message"] == "The downstream app failed: upstream dependency error."


# -- sync hooks run off the event loop, bounded by hook_timeout ---------------------------------------------------


class SlowSyncPreCall:
    """A sync pre-call hook that blocks for a second on requests asking for it (a blocking HTTP call, say)."""

    def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        if data.get("slow"):
            time.sleep(1.0)
        return None


async def test_a_slow_sync_hook_times_out_and_does_not_stall_other_requests() -> None:
    # Regression: sync hooks ran on the event loop: a 1 s hook stalled every request of the process for a second
    # and answered 200 past its 0.2 s timeout.
    app, failures = guard(App(JSON_STEPS), SlowSyncPreCall(), hook_timeout=0.2)
    loop = asyncio.get_running_loop()
    slow_script = Script(body_messages(orjson.dumps(chat(slow=True))))
    began = loop.time()
    slow = asyncio.ensure_future(app(http_scope(), slow_script.receive, slow_script.send))
    await asyncio.sleep(0.05)  # the slow hook is blocking its thread now
    quick_script = Script(body_messages(orjson.dumps(chat())))
    quick_began = loop.time()
    await app(http_scope(), quick_script.receive, quick_script.send)
    quick_took = loop.time() - quick_began
    await slow
    slow_took = loop.time() - began
    assert quick_script.status == 200 and quick_took < 0.5, quick_took  # about 0.95 s when the loop is blocked
    assert error_of(slow_script, 503)["type"] == "timeout_error"
    assert slow_took < 0.7, slow_took  # the 0.2 s timeout, not the hook's 1 s
    assert len(failures.exceptions) == 1


async def test_a_slow_sync_hook_does_not_stall_a_real_server() -> None:
    app = LLMHookMiddleware(App(JSON_STEPS), hooks=[SlowSyncPreCall()], hook_timeout=0.2)

    async def health_or_guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await app(scope, receive, send)

    async with serve(health_or_guarded) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        loop = asyncio.get_running_loop()
        began = loop.time()
        slow = asyncio.ensure_future(client.post("/v1/chat/completions", json=chat(slow=True)))
        await asyncio.sleep(0.05)
        health = await client.get("/health")
        health_took = loop.time() - began
        answer = await slow
        slow_took = loop.time() - began
    assert health.status_code == 200 and health_took < 0.5, health_took
    assert answer.status_code == 503 and answer.json()["error"]["type"] == "timeout_error"
    assert slow_took < 0.7, slow_took


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


async def test_a_sync_hook_sees_the_requests_context_variables() -> None:
    seen: list[tuple[str, bool]] = []

    class SyncReadsContext:
        def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            seen.append((REQUEST_ID.get(), threading.current_thread() is threading.main_thread()))
            return {**data, "request_id": REQUEST_ID.get()}

    down = App(JSON_STEPS)
    app, _ = guard(down, SyncReadsContext())

    async def sets_the_request_id(scope: Any, receive: Any, send: Any) -> None:
        REQUEST_ID.set("req-42")  # as a correlation-id middleware outside the guard does
        await app(scope, receive, send)

    script = await drive(sets_the_request_id)
    assert script.status == 200
    assert seen == [("req-42", False)]  # off the event loop's thread, with the request's context
    assert orjson.loads(down.received or b"{}")["request_id"] == "req-42"


class SyncEveryStage:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        self.calls.append("moderation")

    def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        self.calls.append("post_call")
        return {**response, "checked": True}

    def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                     user_api_key_dict: Any) -> None:
        self.calls.append("failure")

    def async_post_call_complete_hook(self, request_data: dict, user_api_key_dict: Any, status_code: int) -> None:
        self.calls.append(f"complete {status_code}")


async def test_sync_hooks_work_at_every_stage() -> None:
    hook = SyncEveryStage()
    app = LLMHookMiddleware(App(JSON_STEPS), hooks=[hook], hook_timeout=5)
    script = await drive(app)
    assert script.status == 200 and orjson.loads(script.body)["checked"] is True
    assert hook.calls == ["moderation", "post_call", "complete 200"]
    hook.calls.clear()
    broken = LLMHookMiddleware(App([("raise", ValueError("app bug"))]), hooks=[hook])
    script = await drive(broken)
    assert error_of(script, 500)
    assert hook.calls == ["moderation", "failure", "complete 500"]


class SyncChunk:
    def __init__(self) -> None:
        self.calls = 0

    def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.calls += 1
        return {**response, "n": self.calls}


class AsyncChunk(SyncChunk):
    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:  # type: ignore[override]
        self.calls += 1
        return {**response, "n": self.calls}


async def stream_through(hook: Any, chunks: int) -> tuple[float, Script]:
    events = sse([chat_chunk("m", "x") for _ in range(chunks)])
    down = App([("send", START_SSE), *[("send", body(event, True)) for event in events], ("send", body(b""))])
    app = LLMHookMiddleware(down, hooks=[hook])
    loop = asyncio.get_running_loop()
    began = loop.time()
    script = await drive(app, chat(stream=True))
    return loop.time() - began, script


async def test_a_sync_per_chunk_hook_sees_every_chunk_at_a_bounded_cost() -> None:
    # A sync per-chunk hook runs in a worker thread too (hook_timeout bounds each per-chunk call): one thread hop
    # a chunk. Measured on 2,000 chunks against the same hook written async; the bound is wide on purpose (the
    # hop costs tens of microseconds, not milliseconds).
    sync_hook, async_hook = SyncChunk(), AsyncChunk()
    sync_took, script = await stream_through(sync_hook, 2000)
    async_took, _ = await stream_through(async_hook, 2000)
    payloads = stream_payloads(script.body)
    assert [p["n"] for p in payloads[:-1]] == list(range(1, 2001)) and payloads[-1] == "[DONE]"
    assert sync_hook.calls == 2000
    assert sync_took / 2000 < 0.002, (sync_took, async_took)


# -- a hanging auth callable is cancelled when the client leaves ---------------------------------------------------


class HangingAuth:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = 0

    async def __call__(self, scope: Any) -> UserAPIKeyAuth:
        self.started.set()
        try:
            await asyncio.sleep(30)  # a key store that does not answer
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return UserAPIKeyAuth()


@pytest.mark.parametrize("parts", [1, 3])
async def test_a_hanging_auth_callable_is_cancelled_when_the_client_leaves(parts: int) -> None:
    # Regression: disconnects were watched only after the body was read, which came after auth: a hanging auth
    # callable outlived its client (and held the request) for as long as it hung.
    auth = HangingAuth()
    down = App(JSON_STEPS)
    app, failures = guard(down, auth=auth)
    script = await drive(app, messages=body_messages(orjson.dumps(chat()), parts=parts), disconnect_on=auth.started,
                         timeout=2)
    assert script.sent == []
    assert auth.cancelled == 1
    assert down.state == "not called"
    assert [getattr(e, "status_code", None) for e in failures.exceptions] == [499]


async def test_a_hanging_auth_callable_on_a_request_with_a_bad_body_is_cancelled_too() -> None:
    auth = HangingAuth()
    app, failures = guard(App(JSON_STEPS), auth=auth, max_body_bytes=10)
    script = await drive(app, disconnect_on=auth.started, timeout=2)
    assert script.sent == [] and auth.cancelled == 1
    assert [getattr(e, "status_code", None) for e in failures.exceptions] == [499]


@pytest.mark.parametrize("max_body_bytes", [10, 10_000])
async def test_an_auth_error_still_comes_before_a_body_error(max_body_bytes: int) -> None:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        raise HTTPException(401, "unknown key")

    down = App(JSON_STEPS)
    app, failures = guard(down, auth=auth, max_body_bytes=max_body_bytes)
    script = await drive(app, messages=body_messages(b'{"not json', parts=2))
    assert error_of(script, 401)["message"] == "unknown key"
    assert down.state == "not called" and len(failures.exceptions) == 1


async def test_a_body_error_after_a_passing_auth_callable() -> None:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        return UserAPIKeyAuth(user_id="u")

    app, _ = guard(App(JSON_STEPS), auth=auth, max_body_bytes=10)
    script = await drive(app)
    assert error_of(script, 413)


# -- a moderation rejection does not wait for an app that is slow to stop ------------------------------------------


class Rejects:
    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        await asyncio.sleep(0.02)
        raise HTTPException(400, "blocked by moderation")


class StubbornApp:
    """Sends its start, then swallows the first cancellation and runs on for ``linger`` seconds."""

    def __init__(self, linger: float) -> None:
        self.linger = linger
        self.swallowed = 0
        self.state = "not called"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.state = "running"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.swallowed += 1
            self.state = "swallowed"
        try:
            await asyncio.sleep(self.linger)  # "cleaning up" for a while
        except asyncio.CancelledError:
            self.state = "cancelled again"
            raise
        self.state = "finished late"


class TimedScript(Script):
    answered_at: float | None = None

    async def send(self, message: dict[str, Any]) -> None:
        await super().send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.answered_at = asyncio.get_running_loop().time()


async def run_timed(app: Any) -> tuple[TimedScript, float, float]:
    loop = asyncio.get_running_loop()
    before = asyncio.all_tasks()
    script = TimedScript(body_messages(orjson.dumps(chat())))
    began = loop.time()
    await app(http_scope(), script.receive, script.send)
    ended = loop.time()
    await assert_no_new_tasks(before)
    assert script.answered_at is not None
    return script, script.answered_at - began, ended - began


async def test_a_moderation_rejection_is_answered_before_an_app_that_swallows_cancellation_stops() -> None:
    # Regression: the rejection awaited the cancelled app, so its client waited as long as the app ran on.
    down = StubbornApp(linger=0.8)
    app, failures = guard(down, Rejects())
    script, answered, ended = await run_timed(app)
    assert error_of(script, 400)["message"] == "blocked by moderation"
    assert answered < 0.4, answered  # the rejection (about 0.02 s), not the app's 0.8 s
    assert down.state == "finished late" and ended >= 0.8  # awaited in the background, within the grace
    assert len(failures.exceptions) == 1


async def test_an_app_running_on_past_the_grace_is_cancelled_again_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(race, "_APP_STOP_GRACE", 0.2)  # 5 s in production; the wait is what is tested
    down = StubbornApp(linger=30)
    app, _ = guard(down, Rejects())
    script, answered, ended = await run_timed(app)
    assert error_of(script, 400)["message"] == "blocked by moderation"
    assert answered < 0.15, answered
    assert 0.2 <= ended < 1.0, ended  # bounded by the grace, not the app's 30 s
    await asyncio.sleep(0)
    assert down.state == "cancelled again"
    assert "ignored its cancellation" in caplog.text


# -- the same faults in a CustomGuardrail's apply_guardrail --------------------------------------------------------


class GuardrailRecorder(Observer):
    def __init__(self) -> None:
        self.decisions: list[tuple[str, str, str]] = []

    def guardrail_finished(self, guardrail: str, stage: str, decision: str, seconds: float, reason: str | None) -> None:
        self.decisions.append((guardrail, stage, decision))


class SlowSyncGuardrail(CustomGuardrail):
    def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
        if request_data.get("slow"):
            time.sleep(1.0)
        return None


async def test_a_slow_sync_guardrail_times_out_and_does_not_stall_other_requests() -> None:
    guardrail = SlowSyncGuardrail(guardrail_name="slow", event_hook="pre_call", default_on=True)
    app, _ = guard(App(JSON_STEPS), guardrail, hook_timeout=0.2)
    loop = asyncio.get_running_loop()
    slow_script = Script(body_messages(orjson.dumps(chat(slow=True))))
    began = loop.time()
    slow = asyncio.ensure_future(app(http_scope(), slow_script.receive, slow_script.send))
    await asyncio.sleep(0.05)
    quick_script = Script(body_messages(orjson.dumps(chat())))
    quick_began = loop.time()
    await app(http_scope(), quick_script.receive, quick_script.send)
    quick_took = loop.time() - quick_began
    await slow
    assert quick_script.status == 200 and quick_took < 0.5, quick_took
    assert error_of(slow_script, 503)["type"] == "timeout_error"
    assert loop.time() - began < 0.7


async def test_a_guardrail_raising_cancelled_error_of_its_own_is_its_failure() -> None:
    class Cancelled(CustomGuardrail):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            await raise_a_foreign_cancellation()

    recorder = GuardrailRecorder()
    guardrail = Cancelled(guardrail_name="cancelled", event_hook="pre_call", default_on=True)
    app, failures = guard(App(JSON_STEPS), guardrail, observer=recorder)
    script = await drive(app)
    assert error_of(script, 500)["message"] == "pre_call hook Cancelled failed"
    assert recorder.decisions == [("cancelled", "pre_call", "error")]
    assert [type(e) for e in failures.exceptions] == [asyncio.CancelledError]


async def test_a_guardrail_whose_provider_refuses_the_services_key_is_a_502_recorded_as_an_error() -> None:
    class CallsOpenAI(CustomGuardrail):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            raise sdk_errors()[0]

    recorder = GuardrailRecorder()
    guardrail = CallsOpenAI(guardrail_name="calls-openai", event_hook="pre_call", default_on=True)
    app, _ = guard(App(JSON_STEPS), guardrail, observer=recorder)
    script = await drive(app)
    message = error_of(script, 502)["message"]
    assert message == "pre_call hook CallsOpenAI failed: upstream dependency error"
    assert recorder.decisions == [("calls-openai", "pre_call", "error")]  # not a "block" of the client's request


# -- an iterator hook that swallows its cancellation does not hold the request -------------------------------------


class StubbornIterator:
    """Yields the first chunk, then waits; swallows the first cancellation and goes on for ``linger`` seconds."""

    def __init__(self, linger: float) -> None:
        self.linger = linger
        self.waiting = asyncio.Event()
        self.state = "not called"

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: AsyncIterator[dict], request_data: dict
    ) -> AsyncIterator[dict]:
        async for chunk in response:
            yield chunk
            self.waiting.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.state = "swallowed"
            try:
                await asyncio.sleep(self.linger)
            except asyncio.CancelledError:
                self.state = "cancelled again"
                raise
            self.state = "finished late"
            return


ENDLESS_SSE = [("send", START_SSE)] + [step for _ in range(400) for step in
                                       (("send", body(sse([chat_chunk("m", "x")])[0], True)), ("sleep", 0.01))]


async def test_an_iterator_hook_slow_to_stop_is_awaited_within_the_grace() -> None:
    hook = StubbornIterator(linger=0.3)
    app, failures = guard(App(ENDLESS_SSE), hook)
    loop = asyncio.get_running_loop()
    began = loop.time()
    script = await drive(app, chat(stream=True), disconnect_on=hook.waiting, timeout=3)
    assert_legal(script.sent, complete=False)
    assert hook.state == "finished late" and loop.time() - began < 2
    assert [getattr(e, "status_code", None) for e in failures.exceptions] == [499]


async def test_an_iterator_hook_running_on_past_the_grace_is_cancelled_again_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: the request's end awaited the cancelled iterator hook for as long as it ran on (here 30 s).
    monkeypatch.setattr(streaming, "_CONSUMER_STOP_GRACE", 0.2)  # 5 s in production; the wait is what is tested
    hook = StubbornIterator(linger=30)
    app, _ = guard(App(ENDLESS_SSE), hook)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await drive(app, chat(stream=True), disconnect_on=hook.waiting, timeout=3)
    assert loop.time() - began < 2
    assert hook.state == "cancelled again"
    assert "ignored its cancellation" in caplog.text


async def test_a_complete_hook_raising_cancelled_error_of_its_own_is_logged_and_the_next_one_runs() -> None:
    calls: list[int] = []

    class CompleteCancelled:
        async def async_post_call_complete_hook(self, request_data: dict, user_api_key_dict: Any,
                                                status_code: int) -> None:
            await raise_a_foreign_cancellation()

    class CompleteRecords:
        async def async_post_call_complete_hook(self, request_data: dict, user_api_key_dict: Any,
                                                status_code: int) -> None:
            calls.append(status_code)

    app = LLMHookMiddleware(App(JSON_STEPS), hooks=[CompleteCancelled(), CompleteRecords()])
    script = await drive(app)  # the request task ends normally: nothing escaped
    assert script.status == 200
    assert calls == [200]


class StubbornModeration:
    """Swallows the first cancellation and runs on for ``linger`` seconds."""

    def __init__(self, linger: float) -> None:
        self.linger = linger
        self.state = "not called"

    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.state = "swallowed"
        await asyncio.sleep(self.linger)
        self.state = "finished late"


@pytest.mark.parametrize("moderation", ["parallel", "before"])
async def test_a_moderation_rejection_is_answered_before_a_moderation_hook_that_swallows_cancellation_stops(
    moderation: str,
) -> None:
    # Regression: the rejection waited (gather) for every other moderation hook to stop, for as long as one ran on.
    stubborn = StubbornModeration(linger=0.8)
    app, failures = guard(App(JSON_STEPS), stubborn, Rejects(), moderation=moderation)
    script, answered, ended = await run_timed(app)
    assert error_of(script, 400)["message"] == "blocked by moderation"
    assert answered < 0.4, answered
    assert stubborn.state == "finished late" and ended >= 0.8  # awaited after the answer, within the grace
    assert len(failures.exceptions) == 1
