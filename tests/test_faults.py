"""Faults: hooks that raise, hang, return the wrong thing or mutate what they were given; downstream apps that raise,
break the ASGI message order or never finish; clients that leave at every stage.

Every case ends with a legal ASGI response (or, for a client that left, nothing or a legal prefix), calls the
failure hooks exactly once when the request failed, and leaves no task behind. Scripted ASGI, no server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from fastapi import HTTPException

from asgi_llm_guard import LLMHookMiddleware
from asgi_llm_guard.bodies import ClientDisconnected
from asgi_llm_guard.sse import SSEParser

from .apps import Script, body_messages, chat, chat_chunk, chat_completion, http_scope, receive_body, sse
from .asgi_checks import Failures, assert_legal, assert_no_new_tasks, assert_openai_error, response_body

CHAT_EVENTS = sse([chat_chunk("m", word) for word in ("one", " two", " three", " four")]
                  + [chat_chunk("m", None, "stop")])
ANSWER = orjson.dumps(chat_completion("m", "an answer"))
START_JSON = {"type": "http.response.start", "status": 200,
              "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]}
START_SSE = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


JSON_STEPS: list[tuple[Any, ...]] = [("send", START_JSON), ("send", body(ANSWER))]
SSE_STEPS: list[tuple[Any, ...]] = [("send", START_SSE), *[("send", body(e, True)) for e in CHAT_EVENTS],
                                    ("send", body(b""))]


class App:
    """A downstream app following ``steps``: ``("send", message)``, ``("send-ignoring", message)`` (swallows what
    send raises), ``("raise", exc)``, ``("sleep", seconds)``, ``("signal", event)``. Records how it ended."""

    def __init__(self, steps: list[tuple[Any, ...]]) -> None:
        self.steps = steps
        self.state = "not called"
        self.received: bytes | None = None
        self.send_errors: list[BaseException] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.state = "reading"
        self.received = await receive_body(receive)
        self.state = "running"
        try:
            for step in self.steps:
                kind = step[0]
                if kind == "send":
                    try:
                        await send(step[1])
                    except Exception as exc:
                        self.send_errors.append(exc)
                        raise
                elif kind == "send-ignoring":
                    try:
                        await send(step[1])
                    except Exception as exc:
                        self.send_errors.append(exc)
                elif kind == "raise":
                    raise step[1]
                elif kind == "sleep":
                    await asyncio.sleep(step[1])
                elif kind == "signal":
                    step[1].set()
            self.state = "finished"
        except asyncio.CancelledError:
            self.state = "cancelled"
            raise
        except BaseException:
            self.state = "raised"
            raise


async def drive(
    app: Any,
    request: dict[str, Any] | None = None,
    *,
    messages: list[dict[str, Any]] | None = None,
    path: str = "/v1/chat/completions",
    disconnect_on: asyncio.Event | Callable[[Script], bool] | None = None,
    timeout: float = 5.0,
) -> Script:
    """Run one request; ``disconnect_on``: the client leaves once that event is set (or the condition holds).
    Asserts no task is left behind."""
    before = asyncio.all_tasks()
    script = Script(messages if messages is not None else body_messages(orjson.dumps(request or chat())))
    task = asyncio.ensure_future(app(http_scope(path), script.receive, script.send))
    if disconnect_on is not None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not (disconnect_on.is_set() if isinstance(disconnect_on, asyncio.Event) else disconnect_on(script)):
            assert not task.done(), "the request ended before the client could leave"
            assert asyncio.get_running_loop().time() < deadline, "the condition to disconnect never came"
            await asyncio.sleep(0.002)
        script.disconnect.set()
    await asyncio.wait_for(task, timeout)
    await assert_no_new_tasks(before)
    return script


def error_of(script: Script, status: int) -> dict[str, Any]:
    assert_legal(script.sent)
    assert script.status == status, script.body
    return assert_openai_error(script.body, status)


def stream_payloads(data: bytes) -> list[Any]:
    out: list[Any] = []
    for event in SSEParser().feed(data):
        if event.is_done:
            out.append("[DONE]")
        elif event.data is not None:
            out.append(orjson.loads(event.data))
    return out


def guard(app: Any, *hooks: Any, **options: Any) -> tuple[LLMHookMiddleware, Failures]:
    failures = Failures()
    return LLMHookMiddleware(app, hooks=[*hooks, failures], **options), failures


# -- hooks that raise --------------------------------------------------------------------------------------------


class PreCallRaises:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        raise ValueError("pre-call bug")


class ModerationRaises:
    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        await asyncio.sleep(0.02)
        raise ValueError("moderation bug")


class SuccessRaises:
    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        raise ValueError("success bug")


class ChunkRaisesOnThird:
    def __init__(self) -> None:
        self.calls = 0

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.calls += 1
        if self.calls == 3:
            raise ValueError("chunk bug")
        return None


class IteratorRaisesOnThird:
    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: AsyncIterator[dict], request_data: dict
    ) -> AsyncIterator[dict]:
        count = 0
        async for chunk in response:
            count += 1
            if count == 3:
                raise ValueError("iterator bug")
            yield chunk


async def test_pre_call_hook_raising_is_a_500_naming_it() -> None:
    down = App(JSON_STEPS)
    app, failures = guard(down, PreCallRaises())
    script = await drive(app)
    assert error_of(script, 500)["message"] == "pre_call hook PreCallRaises failed"
    assert down.state == "not called"
    assert [type(e) for e in failures.exceptions] == [ValueError]


async def test_moderation_hook_raising_cancels_the_app_and_hides_what_it_sent() -> None:
    down = App([("send", START_JSON), ("send", body(b'{"partial": ', True)), ("sleep", 5), ("send", body(b"1}"))])
    app, failures = guard(down, ModerationRaises())
    script = await drive(app)
    assert error_of(script, 500)["message"] == "moderation hook ModerationRaises failed"
    assert b"partial" not in script.body
    assert down.state == "cancelled"
    assert [type(e) for e in failures.exceptions] == [ValueError]


async def test_success_hook_raising_is_a_500() -> None:
    down = App(JSON_STEPS)
    app, failures = guard(down, SuccessRaises())
    script = await drive(app)
    assert error_of(script, 500)["message"] == "post_call hook SuccessRaises failed"
    assert [type(e) for e in failures.exceptions] == [ValueError]


@pytest.mark.parametrize("hook", [ChunkRaisesOnThird, IteratorRaisesOnThird])
async def test_streaming_hook_raising_mid_stream_ends_the_stream_cleanly(hook: type) -> None:
    down = App([("send", START_SSE), *[("send", body(e, True)) for e in CHAT_EVENTS], ("send", body(b""))])
    app, failures = guard(down, hook())
    script = await drive(app, chat(stream=True))
    assert_legal(script.sent)
    payloads = stream_payloads(script.body)
    assert payloads[-1] == "[DONE]"
    assert payloads[-2]["error"]["message"] == f"streaming hook {hook.__name__} failed"
    assert [type(e) for e in failures.exceptions] == [ValueError]
    assert down.state in ("raised", "finished")


async def test_failure_hook_raising_does_not_change_the_answer() -> None:
    calls: list[str] = []

    class BrokenFailureHook:
        async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                               user_api_key_dict: Any) -> None:
            calls.append(type(original_exception).__name__)
            raise RuntimeError("failure hook bug")

    down = App(JSON_STEPS)
    app = LLMHookMiddleware(down, hooks=[PreCallRaises(), BrokenFailureHook()])
    script = await drive(app)
    assert error_of(script, 500)["message"] == "pre_call hook PreCallRaises failed"
    assert calls == ["ValueError"]


# -- hooks that hang ---------------------------------------------------------------------------------------------


class Hang:
    """Every hook method sleeps far longer than any test waits."""

    def __init__(self, *, fail_open: bool = False) -> None:
        self.fail_open = fail_open
        self.started = asyncio.Event()
        self.cancelled = 0

    async def _hang(self) -> None:
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


class PreCallHangs(Hang):
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        await self._hang()


class ModerationHangs(Hang):
    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        await self._hang()


class SuccessHangs(Hang):
    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        await self._hang()


class ChunkHangsOnSecond(Hang):
    calls = 0

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.calls += 1
        if self.calls == 2:
            await self._hang()
        return None


class IteratorHangs(Hang):
    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: AsyncIterator[dict], request_data: dict
    ) -> AsyncIterator[dict]:
        async for chunk in response:
            yield chunk
            await self._hang()


class FailureHangs(Hang):
    async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                           user_api_key_dict: Any) -> None:
        await self._hang()


@pytest.mark.parametrize(
    ("hook", "steps", "stream"),
    [(PreCallHangs, JSON_STEPS, False), (ModerationHangs, JSON_STEPS, False), (SuccessHangs, JSON_STEPS, False),
     (ChunkHangsOnSecond, SSE_STEPS, True)],
)
async def test_hanging_hook_times_out_with_a_503(hook: type, steps: list[Any], stream: bool) -> None:
    down = App(steps)
    hanging = hook()
    app, failures = guard(down, hanging, hook_timeout=0.05)
    script = await drive(app, chat(stream=stream))
    assert_legal(script.sent)
    if script.sent[0]["status"] == 200:  # a stream that had started: the error is its last event
        payloads = stream_payloads(script.body)
        assert payloads[-2]["error"]["type"] == "timeout_error" and payloads[-1] == "[DONE]"
    else:
        assert error_of(script, 503)["type"] == "timeout_error"
    assert hanging.cancelled == 1
    assert len(failures.exceptions) == 1
    assert down.state in ("not called", "cancelled", "raised", "finished")


async def test_hanging_fail_open_pre_call_hook_is_skipped() -> None:
    down = App(JSON_STEPS)
    hanging = PreCallHangs(fail_open=True)
    app, failures = guard(down, hanging, hook_timeout=0.05)
    script = await drive(app)
    assert_legal(script.sent)
    assert script.status == 200 and script.body == ANSWER
    assert failures.exceptions == []


async def test_hanging_failure_hook_is_bounded_and_skipped() -> None:
    down = App(JSON_STEPS)
    hanging = FailureHangs()
    app = LLMHookMiddleware(down, hooks=[PreCallRaises(), hanging], hook_timeout=0.05)
    script = await drive(app, timeout=2)
    assert error_of(script, 500)["message"] == "pre_call hook PreCallRaises failed"
    assert hanging.cancelled == 1


async def test_hanging_iterator_hook_is_cancelled_when_the_client_leaves() -> None:
    down = App(SSE_STEPS)
    hanging = IteratorHangs()
    app, failures = guard(down, hanging, hook_timeout=0.05)  # iterator hooks are not bounded by hook_timeout
    script = await drive(app, chat(stream=True), disconnect_on=hanging.started)
    assert_legal(script.sent, complete=False)
    assert hanging.cancelled == 1
    assert [getattr(e, "status_code", None) for e in failures.exceptions] == [499]


# -- hooks that return the wrong thing ---------------------------------------------------------------------------


class Returns:
    def __init__(self, value: Any) -> None:
        self.value = value


class PreCallReturns(Returns):
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        return self.value


class SuccessReturns(Returns):
    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        return self.value


class ChunkReturns(Returns):
    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        return self.value


class IteratorReturns(Returns):
    def async_post_call_streaming_iterator_hook(self, user_api_key_dict: Any, response: Any, request_data: dict) -> Any:
        return self.value


class IteratorYields(Returns):
    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: AsyncIterator[dict], request_data: dict
    ) -> AsyncIterator[Any]:
        async for _chunk in response:
            yield self.value


UNSERIALISABLE = [{"model": "m", "x": {1, 2}}, {"model": "m", 1: "int key"}, {"model": "m", "x": object()}]


@pytest.mark.parametrize("value", [42, ["a", "list"], b"bytes", 1.5, True, *UNSERIALISABLE],
                         ids=["int", "list", "bytes", "float", "bool", "set", "int-key", "object"])
async def test_pre_call_hook_returning_the_wrong_type_is_a_500_naming_it(value: Any) -> None:
    down = App(JSON_STEPS)
    app, failures = guard(down, PreCallReturns(value))
    script = await drive(app)
    assert error_of(script, 500)["message"] == "pre_call hook PreCallReturns failed"
    assert down.state == "not called"
    assert len(failures.exceptions) == 1


@pytest.mark.parametrize("value", [b"bytes", *UNSERIALISABLE], ids=["bytes", "set", "int-key", "object"])
async def test_success_hook_returning_the_wrong_type_is_a_500_naming_it(value: Any) -> None:
    down = App(JSON_STEPS)
    app, failures = guard(down, SuccessReturns(value))
    script = await drive(app)
    assert error_of(script, 500)["message"] == "post_call hook SuccessReturns failed"
    assert len(failures.exceptions) == 1


@pytest.mark.parametrize(
    "hook",
    [ChunkReturns(["a list"]), ChunkReturns("text"), ChunkReturns({"x": {1, 2}}), IteratorReturns({"not": "iter"}),
     IteratorReturns(None), IteratorYields("not a dict"), IteratorYields({"x": {1, 2}})],
    ids=["chunk-list", "chunk-str", "chunk-unserialisable", "iterator-dict", "iterator-none", "yields-str",
         "yields-unserialisable"],
)
async def test_streaming_hook_returning_the_wrong_type_fails_cleanly(hook: Any) -> None:
    down = App(SSE_STEPS)
    app, failures = guard(down, hook)
    script = await drive(app, chat(stream=True))
    name = type(hook).__name__
    assert_legal(script.sent)
    if script.status == 200:
        payloads = stream_payloads(script.body)
        assert payloads[-2]["error"]["message"] == f"streaming hook {name} failed" and payloads[-1] == "[DONE]"
    else:
        assert error_of(script, 500)["message"] == f"streaming hook {name} failed"
    assert len(failures.exceptions) == 1


# -- hooks that mutate what they were given ----------------------------------------------------------------------


async def test_in_place_edits_reach_the_app_and_the_later_hooks() -> None:
    seen: dict[str, Any] = {}

    class Mutate:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> None:
            data.pop("messages")
            data["prompt_removed"] = True
            data.setdefault("metadata", {})["tag"] = "x"
            user_api_key_dict.metadata["note"] = "kept"
            user_api_key_dict.api_key = None

        async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> None:
            seen["data"] = data
            seen["note"] = user_api_key_dict.metadata["note"]
            response["choices"].clear()

    down = App(JSON_STEPS)
    app = LLMHookMiddleware(down, hooks=[Mutate()])
    script = await drive(app)
    assert_legal(script.sent)
    assert down.received is not None
    forwarded = orjson.loads(down.received)
    assert "messages" not in forwarded and forwarded["prompt_removed"] is True and forwarded["metadata"] == {"tag": "x"}
    assert seen == {"data": forwarded, "note": "kept"}
    assert orjson.loads(script.body)["choices"] == []


async def test_chunks_a_hook_keeps_and_mutates_later_do_not_change_what_was_sent() -> None:
    kept: list[dict] = []

    class Keep:
        async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> None:
            for old in kept:
                old["choices"][0]["delta"]["content"] = "MUTATED LATER"
            kept.append(response)

    down = App(SSE_STEPS)
    app = LLMHookMiddleware(down, hooks=[Keep()])
    script = await drive(app, chat(stream=True))
    assert_legal(script.sent)
    payloads = stream_payloads(script.body)
    assert [p["choices"][0]["delta"].get("content") for p in payloads[:-1]] == ["one", " two", " three", " four", None]
    assert payloads[-1] == "[DONE]"


async def test_an_iterator_hook_yielding_one_dict_again_and_again() -> None:
    class Reuse:
        """Yields one dict object again and again, changing it in between."""

        async def async_post_call_streaming_iterator_hook(
            self, user_api_key_dict: Any, response: AsyncIterator[dict], request_data: dict
        ) -> AsyncIterator[dict]:
            shared: dict[str, Any] = {}
            async for chunk in response:
                shared.clear()
                shared.update(chunk)
                yield shared

    down = App(SSE_STEPS)
    app = LLMHookMiddleware(down, hooks=[Reuse(), ChunkReturns(None)])
    script = await drive(app, chat(stream=True))
    assert_legal(script.sent)
    payloads = stream_payloads(script.body)
    assert [p["choices"][0]["delta"].get("content") for p in payloads[:-1]] == ["one", " two", " three", " four", None]
    assert payloads[-1] == "[DONE]"


# -- downstream apps that misbehave ------------------------------------------------------------------------------


class PassThrough:
    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: AsyncIterator[dict], request_data: dict
    ) -> AsyncIterator[dict]:
        async for chunk in response:
            yield chunk



async def test_app_raising_before_the_response_started_is_a_500() -> None:
    down = App([("raise", RuntimeError("app bug"))])
    app, failures = guard(down, PreCallReturns(None))
    script = await drive(app)
    assert error_of(script, 500)["message"] == "The downstream app failed while handling the request."
    assert [type(e) for e in failures.exceptions] == [RuntimeError]


async def test_app_raising_an_http_exception_before_the_response_started_keeps_its_status() -> None:
    down = App([("raise", HTTPException(404, detail="no such model"))])
    app, failures = guard(down, PreCallReturns(None))
    script = await drive(app)
    assert error_of(script, 404)["message"] == "no such model"
    assert [type(e) for e in failures.exceptions] == [HTTPException]


@pytest.mark.parametrize("with_success_hook", [False, True])
async def test_app_raising_after_a_json_response_started(with_success_hook: bool) -> None:
    down = App([("send", START_JSON), ("send", body(ANSWER[:10], True)), ("raise", RuntimeError("app bug"))])
    hooks = [SuccessReturns(None)] if with_success_hook else [PreCallReturns(None)]
    app, failures = guard(down, *hooks)
    script = await drive(app)
    assert_legal(script.sent)
    if with_success_hook:  # the start was held for the hook: the client still gets a real error
        assert error_of(script, 500)
    else:
        assert script.status == 200
    assert [type(e) for e in failures.exceptions] == [RuntimeError]


def assert_stream_or_error_coherent(script: Script) -> list[Any]:
    """A legal response that is either an SSE stream ending with an error event and [DONE] (the client's response
    had started), or only the JSON error (it had not): never a mixture. Returns the stream's payloads."""
    assert_legal(script.sent)
    content_type = dict(script.sent[0]["headers"]).get(b"content-type", b"")
    if script.status != 200:
        assert content_type == b"application/json", script.sent[0]
        assert_openai_error(script.body, script.status)
        return []
    assert content_type.startswith(b"text/event-stream"), script.sent[0]
    payloads = stream_payloads(script.body)
    assert payloads[-2]["error"]["code"] == "500" and payloads[-1] == "[DONE]", payloads
    assert all(p["object"] == "chat.completion.chunk" for p in payloads[:-2]), payloads
    return payloads


@pytest.mark.parametrize("hooks", ["pre-call", "per-chunk", "iterator"])
async def test_app_raising_after_a_stream_started_ends_it_with_an_error_event(hooks: str) -> None:
    steps = [("send", START_SSE), *[("send", body(e, True)) for e in CHAT_EVENTS[:3]], ("raise", RuntimeError("x"))]
    down = App(steps)
    chosen: dict[str, Any] = {"pre-call": PreCallReturns(None), "per-chunk": ChunkReturns(None),
                              "iterator": PassThrough()}
    app, failures = guard(down, chosen[hooks])
    script = await drive(app, chat(stream=True))
    payloads = assert_stream_or_error_coherent(script)
    if hooks != "iterator":  # the chunks went out as the app sent them, then the error
        assert [p["choices"][0]["delta"]["content"] for p in payloads[:-2]] == ["one", " two", " three"]
    assert [type(e) for e in failures.exceptions] == [RuntimeError]


@pytest.mark.parametrize("ending", [b"\n\n", b"\r\n\r\n", b"\r\r"])
async def test_app_raising_halfway_through_an_event_gets_the_error_as_an_event_of_its_own(ending: bytes) -> None:
    whole = CHAT_EVENTS[0].replace(b"\n\n", ending)
    partial = CHAT_EVENTS[1][:25]
    steps = [("send", START_SSE), ("send", body(whole, True)), ("send", body(partial, True)),
             ("raise", RuntimeError("x"))]
    app, _ = guard(App(steps), PreCallReturns(None))
    script = await drive(app, chat(stream=True))
    assert_legal(script.sent)
    assert script.body.startswith(whole + partial)
    tail = script.body[len(whole + partial):]
    assert tail.startswith(b"\n\ndata: {")  # the broken event is ended, the error event stands alone
    assert stream_payloads(tail)[-2]["error"]["code"] == "500"


async def test_app_raising_between_events_gets_the_error_right_after_them() -> None:
    steps = [("send", START_SSE), ("send", body(CHAT_EVENTS[0], True)), ("raise", RuntimeError("x"))]
    app, _ = guard(App(steps), PreCallReturns(None))
    script = await drive(app, chat(stream=True))
    assert script.body.startswith(CHAT_EVENTS[0] + b'data: {"error"')


class YieldingScript(Script):
    """A client whose ``send`` yields to the event loop, as a real server's does when it writes."""

    async def send(self, message: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        self.sent.append(message)


@pytest.mark.parametrize("pause", [0, 1, 2, 3])
async def test_app_raising_while_an_iterator_hook_holds_chunks_never_mixes_stream_and_error(pause: int) -> None:
    """The iterator hook's consumer task and the error answer must not interleave their messages."""
    steps = [("send", START_SSE), *[("send", body(e, True)) for e in CHAT_EVENTS[:3]], *[("sleep", 0)] * pause,
             ("raise", RuntimeError("x"))]
    down = App(steps)
    app, failures = guard(down, PassThrough())
    before = asyncio.all_tasks()
    script = YieldingScript(body_messages(orjson.dumps(chat(stream=True))))
    await asyncio.wait_for(app(http_scope(), script.receive, script.send), 5)
    await assert_no_new_tasks(before)
    assert_stream_or_error_coherent(script)
    assert [type(e) for e in failures.exceptions] == [RuntimeError]


async def test_app_sending_a_body_before_the_start_is_a_500() -> None:
    down = App([("send", body(b"too early")), ("send", START_JSON), ("send", body(ANSWER))])
    app, failures = guard(down, PreCallReturns(None))
    script = await drive(app)
    assert error_of(script, 500)
    assert b"too early" not in script.body
    assert len(failures.exceptions) == 1
    assert len(down.send_errors) == 1


async def test_app_sending_the_start_twice() -> None:
    down = App([("send", START_JSON), ("send", START_JSON), ("send", body(ANSWER))])
    app, failures = guard(down, PreCallReturns(None))
    script = await drive(app)
    assert_legal(script.sent)
    assert len(down.send_errors) == 1
    assert len(failures.exceptions) == 1


@pytest.mark.parametrize("hooks", ["pre-call", "success", "per-chunk"])
@pytest.mark.parametrize("app_reaction", ["raises", "ignores"])
async def test_app_sending_after_the_end(hooks: str, app_reaction: str) -> None:
    stream = hooks == "per-chunk"
    done = [("send", START_SSE), ("send", body(CHAT_EVENTS[0], True)), ("send", body(CHAT_EVENTS[-1]))] if stream \
        else JSON_STEPS
    late = body(b"late bytes")
    down = App([*done, ("send" if app_reaction == "raises" else "send-ignoring", late), ("send-ignoring", late)])
    chosen = {"pre-call": PreCallReturns(None), "success": SuccessReturns(None), "per-chunk": ChunkReturns(None)}
    app, failures = guard(down, chosen[hooks])
    script = await drive(app, chat(stream=stream))
    assert_legal(script.sent)
    assert script.status == 200
    assert b"late bytes" not in script.body
    assert len(down.send_errors) >= 1
    assert len(failures.exceptions) <= 1


async def test_app_returning_without_a_response_is_a_500() -> None:
    down = App([])
    app, failures = guard(down, PreCallReturns(None))
    script = await drive(app)
    assert error_of(script, 500)
    assert len(failures.exceptions) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_app_returning_without_the_final_body_still_ends_the_response(stream: bool) -> None:
    steps = [("send", START_SSE), ("send", body(CHAT_EVENTS[0], True))] if stream \
        else [("send", START_JSON), ("send", body(ANSWER, True))]
    down = App(steps)
    app, failures = guard(down, ChunkReturns(None) if stream else PreCallReturns(None))
    script = await drive(app, chat(stream=stream))
    assert_legal(script.sent)
    assert script.status == 200


@pytest.mark.parametrize(
    "steps",
    [[("sleep", 30)], [("send", START_JSON), ("sleep", 30)], [("send", START_SSE), ("send", body(CHAT_EVENTS[0], True)),
                                                              ("sleep", 30)]],
    ids=["before-start", "after-start", "mid-stream"],
)
@pytest.mark.parametrize("hooks", ["pre-call", "per-chunk", "success"])
async def test_app_that_never_finishes_is_cancelled_when_the_client_leaves(steps: list[Any], hooks: str) -> None:
    started = asyncio.Event()
    down = App([("signal", started), *steps])
    chosen = {"pre-call": PreCallReturns(None), "success": SuccessReturns(None), "per-chunk": ChunkReturns(None)}
    app, failures = guard(down, chosen[hooks])
    script = await drive(app, chat(stream=True), disconnect_on=started)
    assert_legal(script.sent, complete=False)
    assert down.state == "cancelled"
    assert [getattr(e, "status_code", None) for e in failures.exceptions] == [499]


# -- clients that leave ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        [{"type": "http.disconnect"}],
        [{"type": "http.request", "body": b'{"model": "m", ', "more_body": True}, {"type": "http.disconnect"}],
        [{"type": "http.request", "body": b"", "more_body": True}, {"type": "http.disconnect"}],
    ],
    ids=["no-body", "half-a-body", "empty-then-gone"],
)
async def test_client_leaving_before_the_body_is_complete(messages: list[dict[str, Any]]) -> None:
    down = App(JSON_STEPS)
    hook = PreCallReturns(None)
    app, failures = guard(down, hook)
    script = await drive(app, messages=messages)
    assert_legal(script.sent, complete=False)
    assert down.state == "not called"
    assert len(failures.exceptions) == 1 and isinstance(failures.exceptions[0], ClientDisconnected)


@pytest.mark.parametrize("hook", [PreCallHangs, SuccessHangs])
async def test_client_leaving_while_a_hook_runs_cancels_it(hook: type) -> None:
    down = App(JSON_STEPS)
    hanging = hook()
    app, failures = guard(down, hanging)
    script = await drive(app, disconnect_on=hanging.started)
    assert_legal(script.sent, complete=False)
    assert hanging.cancelled == 1
    assert [getattr(e, "status_code", None) for e in failures.exceptions] == [499]
    # a success hook runs inside the app's send of its final body, so the app is cancelled with it
    assert down.state in ("not called", "cancelled")


@pytest.mark.parametrize("mode", ["parallel", "before"])
async def test_client_leaving_while_moderation_runs(mode: str) -> None:
    down = App([("sleep", 30), *JSON_STEPS])
    hanging = ModerationHangs()
    app, failures = guard(down, hanging, ModerationHangs(), moderation=mode)
    script = await drive(app, disconnect_on=hanging.started)
    assert script.sent == []
    assert hanging.cancelled == 1
    assert down.state == ("cancelled" if mode == "parallel" else "not called")
    assert [getattr(e, "status_code", None) for e in failures.exceptions] == [499]


@pytest.mark.parametrize("hooks", ["none", "per-chunk", "iterator", "moderation"])
async def test_client_leaving_mid_stream(hooks: str) -> None:
    endless = [("send", START_SSE)] + [step for _ in range(500) for step in
                                       (("send", body(CHAT_EVENTS[0], True)), ("sleep", 0.005))]
    down = App(endless)

    class QuickModeration:
        async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
            return None

    chosen = {"none": PreCallReturns(None), "per-chunk": ChunkReturns(None), "iterator": PassThrough(),
              "moderation": QuickModeration()}
    app, failures = guard(down, chosen[hooks])
    script = await drive(app, chat(stream=True), disconnect_on=lambda s: len(s.sent) >= 4)
    assert_legal(script.sent, complete=False)
    assert down.state == "cancelled"
    assert [getattr(e, "status_code", None) for e in failures.exceptions] == [499]
    assert response_body(script.sent).startswith(CHAT_EVENTS[0])
