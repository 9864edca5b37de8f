"""Moderation hooks raced against the app, with the app's response held until they pass
(docs/reference.md#moderation-race).

ASGITransport buffers responses, so ordering and hold/release are asserted on the exact ASGI message list.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from typing import Any

import fastapi
import orjson
import pytest

from asgi_llm_guard import LLMHookMiddleware, RejectRequest

from .apps import Downstream, Script, body_messages, chat, client, http_scope


class Moderate:
    def __init__(
        self, delay: float = 0.0, verdict: Exception | None = None, gate: asyncio.Event | None = None, **attributes: Any
    ) -> None:
        self.delay, self.verdict, self.gate = delay, verdict, gate
        self.calls = 0
        self.cancelled = False
        self.__dict__.update(attributes)

    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        self.calls += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.verdict is not None:
            raise self.verdict


class App:
    """Streams three SSE events, recording what happened to it; `finished` is set only at its very end."""

    def __init__(self, delay: float = 0.0, before_start: float = 0.0) -> None:
        self.delay, self.before_start = delay, before_start
        self.sent: list[str] = []
        self.finished = asyncio.Event()
        self.cancelled = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        try:
            await asyncio.sleep(self.before_start)
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            )
            self.sent.append("start")
            for index in range(3):
                await send(
                    {"type": "http.response.body", "body": f'data: {{"n": {index}}}\n\n'.encode(), "more_body": True}
                )
                self.sent.append(f"chunk{index}")
                await asyncio.sleep(self.delay)
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            self.sent.append("end")
            self.finished.set()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


def run(app: Any, body: dict[str, Any] | None = None) -> tuple[Script, Any]:
    script = Script(body_messages(orjson.dumps(body or chat(stream=True))))
    return script, app(http_scope(), script.receive, script.send)


async def test_response_is_held_until_moderation_passes_then_released_in_order() -> None:
    gate = asyncio.Event()
    app = App()
    script, call = run(LLMHookMiddleware(app, hooks=[Moderate(gate=gate)]))
    task = asyncio.ensure_future(call)
    await asyncio.wait_for(app.finished.wait(), 1)  # the app ran to its end while moderation was still open
    assert app.sent == ["start", "chunk0", "chunk1", "chunk2", "end"]
    assert script.sent == []  # ... and nothing reached the client
    gate.set()
    await asyncio.wait_for(task, 1)
    assert [(m["type"], m.get("body"), m.get("more_body")) for m in script.sent] == [
        ("http.response.start", None, None),
        ("http.response.body", b'data: {"n": 0}\n\n', True),
        ("http.response.body", b'data: {"n": 1}\n\n', True),
        ("http.response.body", b'data: {"n": 2}\n\n', True),
        ("http.response.body", b"data: [DONE]\n\n", False),
    ]


async def test_sends_after_release_go_straight_through() -> None:
    app = App(delay=0.05)
    script, call = run(LLMHookMiddleware(app, hooks=[Moderate(delay=0.02)]))
    await asyncio.wait_for(call, 2)
    assert [m["type"] for m in script.sent] == ["http.response.start"] + ["http.response.body"] * 4
    assert script.sent[-1]["more_body"] is False


async def test_rejection_after_the_app_finished_drops_everything_it_sent() -> None:
    gate = asyncio.Event()
    app = App()
    hook = Moderate(gate=gate, verdict=RejectRequest("blocked by moderation"))
    script, call = run(LLMHookMiddleware(app, hooks=[hook]), chat(stream=False))
    task = asyncio.ensure_future(call)
    await asyncio.wait_for(app.finished.wait(), 1)
    gate.set()
    await asyncio.wait_for(task, 1)
    assert [m["type"] for m in script.sent] == ["http.response.start", "http.response.body"]
    assert (b"x-llm-guard-rejected", b"moderation") in script.sent[0]["headers"]
    assert orjson.loads(script.body)["choices"][0]["message"]["content"] == "blocked by moderation"
    assert b'"n"' not in script.body


async def test_rejection_while_the_app_streams_cancels_it() -> None:
    app = App(delay=0.05)
    hook = Moderate(delay=0.08, verdict=fastapi.HTTPException(400, detail="unsafe"))
    script, call = run(LLMHookMiddleware(app, hooks=[hook]))
    await asyncio.wait_for(call, 2)
    assert app.cancelled and not app.finished.is_set()
    assert "chunk0" in app.sent
    assert [m["type"] for m in script.sent] == ["http.response.start", "http.response.body"]
    assert script.status == 400
    assert orjson.loads(script.body)["error"]["message"] == "unsafe"
    assert (b"x-llm-guard-rejected", b"moderation") in script.sent[0]["headers"]


async def test_streamed_request_rejected_in_moderation_gets_a_streamed_refusal() -> None:
    app = App(delay=0.01)
    script, call = run(LLMHookMiddleware(app, hooks=[Moderate(delay=0.05, verdict=RejectRequest("nope"))]))
    await asyncio.wait_for(call, 2)
    assert script.status == 200
    assert script.body.endswith(b"data: [DONE]\n\n")
    assert b'"content":"nope"' in script.body
    assert b'"n"' not in script.body


async def test_latency_is_the_max_not_the_sum() -> None:
    app = App(before_start=0.3)
    script, call = run(LLMHookMiddleware(app, hooks=[Moderate(delay=0.3)]))
    started = time.perf_counter()
    await call
    elapsed = time.perf_counter() - started
    assert 0.3 <= elapsed < 0.5
    assert script.sent[-1]["more_body"] is False


async def test_quick_rejection_cancels_a_slow_app() -> None:
    app = App(before_start=5)
    script, call = run(LLMHookMiddleware(app, hooks=[Moderate(verdict=RejectRequest("no"))]))
    started = time.perf_counter()
    await call
    assert time.perf_counter() - started < 0.5
    assert app.cancelled
    assert script.status == 200


async def test_all_moderation_hooks_run_together_and_the_first_rejection_cancels_the_rest() -> None:
    slow = Moderate(delay=5)
    quick = Moderate(delay=0.05, verdict=RejectRequest("quick says no"))
    app = App(before_start=5)
    script, call = run(LLMHookMiddleware(app, hooks=[slow, quick]), chat())
    started = time.perf_counter()
    await call
    assert time.perf_counter() - started < 0.5
    assert slow.cancelled and app.cancelled
    assert orjson.loads(script.body)["choices"][0]["message"]["content"] == "quick says no"


async def test_two_passing_hooks_take_the_time_of_the_slower() -> None:
    app = App()
    script, call = run(LLMHookMiddleware(app, hooks=[Moderate(delay=0.2), Moderate(delay=0.2)]))
    started = time.perf_counter()
    await call
    assert time.perf_counter() - started < 0.35
    assert script.sent[-1]["more_body"] is False


async def test_moderation_before_never_calls_the_app_for_a_blocked_prompt() -> None:
    down = Downstream()
    hook = Moderate(verdict=RejectRequest("blocked first"))
    app = LLMHookMiddleware(down, hooks=[hook], moderation="before")
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.json()["choices"][0]["message"]["content"] == "blocked first"
    assert down.received == []


async def test_moderation_before_runs_first_then_the_app() -> None:
    order: list[str] = []

    class Hook:
        async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
            await asyncio.sleep(0.05)
            order.append("moderation")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        order.append("app")
        await Downstream()(scope, receive, send)

    async with client(LLMHookMiddleware(app, hooks=[Hook()], moderation="before")) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    assert order == ["moderation", "app"]


async def test_moderation_hook_timeout_fails_closed_or_open() -> None:
    closed = LLMHookMiddleware(Downstream(), hooks=[Moderate(delay=5, timeout=0.05)])
    opened = LLMHookMiddleware(Downstream(), hooks=[Moderate(delay=5, timeout=0.05, fail_open=True)])
    async with client(closed) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "timeout_error"
    assert response.headers["x-llm-guard-rejected"] == "moderation"
    async with client(opened) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200


async def test_moderation_hook_bug_is_a_500_naming_it() -> None:
    app = LLMHookMiddleware(Downstream(), hooks=[Moderate(verdict=ZeroDivisionError())])
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "moderation hook Moderate failed"


async def test_app_error_during_moderation_is_reported_after_moderation_passes() -> None:
    failures: list[BaseException] = []

    class Watch(Moderate):
        async def async_post_call_failure_hook(
            self, request_data: dict, original_exception: Exception, user_api_key_dict: Any
        ) -> None:
            failures.append(original_exception)

    async def crashing(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise RuntimeError("boom")

    async with client(LLMHookMiddleware(crashing, hooks=[Watch(delay=0.05)])) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 500
    assert [type(f) for f in failures] == [RuntimeError]


@pytest.mark.parametrize("moderation", ["parallel", "before"])
async def test_no_task_outlives_a_moderated_request(moderation: str) -> None:
    before = asyncio.all_tasks()
    app = LLMHookMiddleware(App(), hooks=[Moderate(delay=0.01), Moderate(delay=0.02)], moderation=moderation)
    script, call = run(app)
    await call
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()


# -- what is held while moderation runs is bounded: the app waits instead ------------------------------------

CHUNK = 64 * 1024


def numbered_chunk(index: int) -> bytes:
    return index.to_bytes(4, "big") * (CHUNK // 4)


class Bulk:
    """Sends ``chunks`` numbered 64 KiB chunks as fast as ``send`` returns, noting how many bytes it got out."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.sent_bytes = 0
        self.finished = False
        self.cancelled = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        try:
            headers = [(b"content-type", b"application/octet-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for index in range(self.chunks):
                body = numbered_chunk(index)
                await send({"type": "http.response.body", "body": body, "more_body": index < self.chunks - 1})
                self.sent_bytes += len(body)
            self.finished = True
        except asyncio.CancelledError:
            self.cancelled = True
            raise


class InOrder:
    """The client's ``send``: checks each chunk is the next one as it arrives, keeping none of them."""

    def __init__(self) -> None:
        self.types: list[str] = []
        self.chunks = 0
        self.out_of_order: list[int] = []
        self.body = b""  # only for an answer the middleware wrote itself
        self.status = 0

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.types.append("start")
            return
        body = message.get("body", b"")
        if len(body) == CHUNK:
            if body != numbered_chunk(self.chunks):
                self.out_of_order.append(self.chunks)
            self.chunks += 1
        else:
            self.body += body
        if not message.get("more_body", False):
            self.types.append("end")


class SlowModeration:
    """Passes (or rejects) after ``delay`` seconds, noting how many bytes the app had sent by then."""

    def __init__(self, app: Bulk, delay: float, verdict: Exception | None = None) -> None:
        self.app, self.delay, self.verdict = app, delay, verdict
        self.app_sent_by_verdict = -1

    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        await asyncio.sleep(self.delay)
        self.app_sent_by_verdict = self.app.sent_bytes
        if self.verdict is not None:
            raise self.verdict


async def test_a_fast_app_waits_at_1_mib_held_and_the_client_gets_every_byte_in_order() -> None:
    # Regression: everything the app sent during moderation was held, without bound (a 60 MB stream held in
    # memory during a 4 s moderation). Now the app's send waits once 1 MiB is held, until moderation passed.
    app = Bulk(chunks=800)  # 50 MiB
    moderation = SlowModeration(app, delay=0.5)
    client_side = InOrder()
    script = Script(body_messages(orjson.dumps(chat())))
    guard = LLMHookMiddleware(app, hooks=[moderation])
    await asyncio.wait_for(guard(http_scope(), script.receive, client_side.send), 20)
    assert moderation.app_sent_by_verdict <= 1024 * 1024  # 1 MiB held (16 chunks), the 16th send waiting
    assert app.finished and client_side.types == ["start", "end"]
    assert (client_side.chunks, client_side.out_of_order) == (800, [])


async def test_a_rejection_while_the_app_waits_at_the_limit_answers_at_once_and_cancels_it() -> None:
    app = Bulk(chunks=800)
    moderation = SlowModeration(app, delay=0.3, verdict=RejectRequest("blocked by moderation"))
    client_side = InOrder()
    script = Script(body_messages(orjson.dumps(chat())))
    started = time.perf_counter()
    guard = LLMHookMiddleware(app, hooks=[moderation])
    await asyncio.wait_for(guard(http_scope(), script.receive, client_side.send), 5)
    assert time.perf_counter() - started < 1.5
    assert app.cancelled and not app.finished
    assert moderation.app_sent_by_verdict <= 1024 * 1024
    assert client_side.status == 200 and client_side.chunks == 0  # nothing the app sent reached the client
    assert orjson.loads(client_side.body)["choices"][0]["message"]["content"] == "blocked by moderation"


async def test_what_an_app_sends_after_a_rejection_is_discarded_not_held() -> None:
    # An app that swallows its cancellation and sends on while the failure hooks look at the rejection: none of
    # it can reach the client, so none of it is kept (it was held, without bound, in a list nobody would read).

    class Stubborn:
        sent_after_rejection = 0

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                pass  # swallowed
            for index in range(800):  # 50 MiB
                await send({"type": "http.response.body", "body": bytes(CHUNK), "more_body": True})
                self.sent_after_rejection += CHUNK
                if index % 100 == 0:
                    await asyncio.sleep(0)

    class SlowFailureHook:
        async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                               user_api_key_dict: Any) -> None:
            await asyncio.sleep(0.3)  # the app runs meanwhile

    app = Stubborn()
    hooks = [Moderate(delay=0.05, verdict=RejectRequest("blocked by moderation")), SlowFailureHook()]
    client_side = InOrder()
    script = Script(body_messages(orjson.dumps(chat())))
    tracemalloc.start()
    try:
        guard = LLMHookMiddleware(app, hooks=hooks)
        await asyncio.wait_for(guard(http_scope(), script.receive, client_side.send), 5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert app.sent_after_rejection == 800 * CHUNK  # it did send it all, before the rejection was answered
    assert peak < 8 * 1024 * 1024  # 50 MiB when it was held
    assert client_side.chunks == 0
    assert orjson.loads(client_side.body)["choices"][0]["message"]["content"] == "blocked by moderation"
