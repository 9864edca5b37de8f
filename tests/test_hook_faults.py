"""Faults of hooks and of what they call: a ``CancelledError`` a hook raises of its own accord, slow sync hooks, a
hanging ``auth`` callable, an app that swallows its cancellation, and a provider SDK's error raised inside a hook.

Scripted ASGI (as in ``test_faults.py``), and real timing with wide gaps where the defect is about time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from asgi_llm_guard import LLMHookMiddleware, UserAPIKeyAuth

from .apps import Script, body_messages, chat, http_scope
from .asgi_checks import Failures, assert_legal
from .test_faults import JSON_STEPS, SSE_STEPS, App, drive, error_of, guard, stream_payloads


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
