"""Legal ASGI order and no lost data, whatever the downstream app does: the start before any body, exactly one
final body, the trailers a start announced after it, and every event the app sent (its ``[DONE]`` included)
through each response path: passed through, held by moderation, rewritten by streaming hooks, buffered JSON.

Scripted ``receive``/``send`` with the exact messages the client gets; the defects that showed on the wire are
also checked through real servers (uvicorn with httptools and with h11, hypercorn).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from asgi_llm_guard import LLMHookMiddleware

from .apps import Script, body_messages, chat, chat_chunk, chat_completion, http_scope, receive_body, sse
from .asgi_checks import Failures, assert_legal, assert_no_new_tasks
from .servers import serve, serve_hypercorn

EVENTS = sse([chat_chunk("m", word) for word in ("one", " two", " three")] + [chat_chunk("m", None, "stop")])
STREAM = b"".join(EVENTS)
SSE_HEADERS = [(b"content-type", b"text/event-stream")]
START_SSE = {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS}
ANSWER = orjson.dumps(chat_completion("m", "an answer"))
START_JSON = {"type": "http.response.start", "status": 200,
              "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]}
TRAILERS = {"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")], "more_trailers": False}
NO_TRAILERS = {"type": "http.response.trailers", "headers": [], "more_trailers": False}


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


def streamed(events: list[bytes] = EVENTS) -> list[dict[str, Any]]:
    return [body(event, True) for event in events]


class Scripted:
    """A downstream app that reads the request, then sends ``messages`` and optionally raises ``then_raise``."""

    def __init__(self, messages: list[dict[str, Any]], then_raise: BaseException | None = None) -> None:
        self.messages = messages
        self.then_raise = then_raise
        self.send_errors: list[BaseException] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive_body(receive)
        for message in self.messages:
            try:
                await send(message)
            except Exception as exc:
                self.send_errors.append(exc)
                raise
        if self.then_raise is not None:
            raise self.then_raise


class PreCall:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        return None


class PerChunk:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.seen.append(response)
        return None


class Iterator:
    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: AsyncIterator[dict], request_data: dict
    ) -> AsyncIterator[dict]:
        async for chunk in response:
            yield chunk


class IteratorStoppingAfterOne:
    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: AsyncIterator[dict], request_data: dict
    ) -> AsyncIterator[dict]:
        async for chunk in response:
            yield chunk
            return


class Success:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        self.seen.append(response)
        return None


class Moderation:
    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        await asyncio.sleep(0.02)  # the app's whole response arrives while this runs: all of it is held


HOOKS = {"pre-call": PreCall, "per-chunk": PerChunk, "iterator": Iterator}


async def drive(app: Any, stream: bool = True) -> Script:
    before = asyncio.all_tasks()
    script = Script(body_messages(orjson.dumps(chat(stream=stream))))
    await asyncio.wait_for(app(http_scope(), script.receive, script.send), 5)
    await assert_no_new_tasks(before)
    return script


def kinds(script: Script) -> list[tuple[str, bool]]:
    return [(m["type"], bool(m.get("more_body", m.get("more_trailers", False)))) for m in script.sent]


# -- an SSE start and no complete event --------------------------------------------------------------------------


@pytest.mark.parametrize("tail", [b"", b'data: {"partial'], ids=["nothing", "half-an-event"])
@pytest.mark.parametrize("hook", ["per-chunk", "iterator"])
async def test_stream_start_then_return_sends_the_start_before_the_body(hook: str, tail: bytes) -> None:
    """Regression: the held start was never sent, so the client got a body before any start (uvicorn's 500)."""
    steps = [START_SSE, body(tail, True)] if tail else [START_SSE]
    script = await drive(LLMHookMiddleware(Scripted(steps), hooks=[HOOKS[hook]()]))
    assert kinds(script) == [("http.response.start", False), ("http.response.body", False)]
    assert script.status == 200
    assert script.body == tail


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_stream_start_then_return_over_uvicorn_is_a_200(http: str) -> None:
    app = LLMHookMiddleware(Scripted([START_SSE]), hooks=[PerChunk()])
    async with serve(app, http=http) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        response = await client.post("/v1/chat/completions", json=chat(stream=True))
    assert (response.status_code, response.content) == (200, b"")
    assert response.headers["content-type"] == "text/event-stream"


async def test_stream_start_then_return_over_hypercorn_is_a_200() -> None:
    app = LLMHookMiddleware(Scripted([START_SSE]), hooks=[PerChunk()])
    async with serve_hypercorn(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        response = await client.post("/v1/chat/completions", json=chat(stream=True))
    assert (response.status_code, response.content) == (200, b"")


@pytest.mark.parametrize("hook", ["pre-call", "per-chunk", "iterator"])
async def test_app_raising_before_its_start_is_a_json_500(hook: str) -> None:
    failures = Failures()
    app = LLMHookMiddleware(Scripted([], then_raise=RuntimeError("x")), hooks=[HOOKS[hook](), failures])
    script = await drive(app)
    assert kinds(script) == [("http.response.start", False), ("http.response.body", False)]
    assert script.status == 500 and orjson.loads(script.body)["error"]["code"] == "500"
    assert len(failures.exceptions) == 1


@pytest.mark.parametrize("hook", ["pre-call", "per-chunk", "iterator"])
async def test_app_sending_nothing_at_all_is_a_json_500(hook: str) -> None:
    script = await drive(LLMHookMiddleware(Scripted([]), hooks=[HOOKS[hook]()]))
    assert kinds(script) == [("http.response.start", False), ("http.response.body", False)]
    assert script.status == 500


@pytest.mark.parametrize("hook", ["pre-call", "per-chunk", "iterator"])
async def test_app_sending_the_start_twice_or_a_body_after_the_end_keeps_the_order_legal(hook: str) -> None:
    for steps in ([START_SSE, START_SSE, *streamed(), body(b"")], [START_SSE, *streamed(), body(b""), body(b"late")]):
        down = Scripted(steps)
        script = await drive(LLMHookMiddleware(down, hooks=[HOOKS[hook]()]))
        assert_legal(script.sent)
        assert b"late" not in script.body
        assert len(down.send_errors) == 1


@pytest.mark.parametrize("hook", ["pre-call", "per-chunk", "iterator"])
async def test_app_sending_a_body_before_its_start_gets_a_json_500(hook: str) -> None:
    down = Scripted([body(b"data: early\n\n", True), START_SSE, *streamed(), body(b"")])
    script = await drive(LLMHookMiddleware(down, hooks=[HOOKS[hook]()]))
    assert kinds(script) == [("http.response.start", False), ("http.response.body", False)]
    assert script.status == 500 and b"early" not in script.body
    assert len(down.send_errors) == 1


# -- iterator hooks: nothing queued is lost ----------------------------------------------------------------------


async def test_iterator_hook_app_returning_without_its_final_body_keeps_the_queued_events_and_done() -> None:
    """Regression: the events still queued for the iterator hook, [DONE] among them, were dropped."""
    script = await drive(LLMHookMiddleware(Scripted([START_SSE, *streamed()]), hooks=[Iterator()]))
    assert_legal(script.sent)
    assert script.body == STREAM


async def test_per_chunk_hook_app_returning_without_its_final_body_keeps_every_event() -> None:
    script = await drive(LLMHookMiddleware(Scripted([START_SSE, *streamed()]), hooks=[PerChunk()]))
    assert_legal(script.sent)
    assert script.body == STREAM


async def test_iterator_hook_ending_early_still_ends_the_stream_with_done() -> None:
    """Regression: an iterator hook that stopped before the app's [DONE] left the client without one."""
    down = Scripted([START_SSE, *streamed(), body(b"")])
    script = await drive(LLMHookMiddleware(down, hooks=[IteratorStoppingAfterOne()]))
    assert_legal(script.sent)
    assert script.body == EVENTS[0] + b"data: [DONE]\n\n"


async def test_success_hook_app_returning_without_its_final_body_still_runs_the_hook() -> None:
    """The JSON body the app sent (all but the final empty message) reaches the hook and the client whole."""
    success = Success()
    down = Scripted([START_JSON, body(ANSWER[:20], True), body(ANSWER[20:], True)])
    script = await drive(LLMHookMiddleware(down, hooks=[success]), stream=False)
    assert_legal(script.sent)
    assert orjson.loads(script.body) == orjson.loads(ANSWER) == success.seen[0]
    assert dict(script.sent[0]["headers"])[b"content-length"] == str(len(script.body)).encode()


# -- an app raising after its own [DONE] -------------------------------------------------------------------------


@pytest.mark.parametrize("final", [False, True], ids=["raises-before-final-body", "raises-after-final-body"])
@pytest.mark.parametrize("hook", ["pre-call", "per-chunk", "iterator"])
async def test_app_raising_after_its_done_ends_the_stream_cleanly(
    hook: str, final: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the client got an error event and a second [DONE] after the app's own [DONE]."""
    failures = Failures()
    steps = [START_SSE, *streamed(), *([body(b"")] if final else [])]
    app = LLMHookMiddleware(Scripted(steps, then_raise=RuntimeError("cleanup failed")), hooks=[HOOKS[hook](), failures])
    with caplog.at_level(logging.ERROR, logger="asgi_llm_guard"):
        script = await drive(app)
    assert_legal(script.sent)
    assert script.status == 200
    assert script.body == STREAM
    assert "RuntimeError" in caplog.text
    assert len(failures.exceptions) <= 1


@pytest.mark.parametrize(
    "tail",
    [[b"data: [DONE]\r\n\r", b"\n"], [b"data: [DONE]\n\n", b""], [b"data: [DO", b"NE]\n\n"]],
    ids=["crlf-split-after-its-cr", "empty-message-after", "done-split"],
)
@pytest.mark.parametrize("hook", ["pre-call", "per-chunk", "iterator"])
async def test_app_raising_after_its_done_sent_in_pieces_ends_the_stream_cleanly(hook: str, tail: list[bytes]) -> None:
    """Regression: on the pass-through path only the last message was looked at for the app's [DONE]: when it was
    the LF of the [DONE]'s CRLF, an empty message, or the [DONE] line's second half, the client got an error event
    and a second [DONE] after the app's own."""
    steps = [START_SSE, *streamed(EVENTS[:-1]), *[body(piece, True) for piece in tail]]
    app = LLMHookMiddleware(Scripted(steps, then_raise=RuntimeError("cleanup failed")), hooks=[HOOKS[hook]()])
    script = await drive(app)
    assert_legal(script.sent)
    assert script.body.count(b"[DONE]") == 1 and b"error" not in script.body


async def test_app_raising_mid_stream_still_gets_the_error_event_and_done() -> None:
    """The other side of the above: a stream cut off before [DONE] ends with the error event and [DONE]."""
    app = LLMHookMiddleware(Scripted([START_SSE, *streamed(EVENTS[:2])], then_raise=RuntimeError("x")),
                            hooks=[PerChunk()])
    script = await drive(app)
    assert_legal(script.sent)
    assert script.body.startswith(b"".join(EVENTS[:2]) + b'data: {"error":')
    assert script.body.endswith(b"data: [DONE]\n\n")


# -- trailers ----------------------------------------------------------------------------------------------------


def announcing(start: dict[str, Any]) -> dict[str, Any]:
    return {**start, "trailers": True}


TRAILER_PATHS = {
    # hooks, request is streamed, the app's messages before its trailers
    "pass-through": ([PreCall], True, [announcing(START_SSE), *streamed(), body(b"")]),
    "held-by-moderation-stream": ([Moderation], True, [announcing(START_SSE), *streamed(), body(b"")]),
    "held-by-moderation-rewritten": ([Moderation, PerChunk], True, [announcing(START_SSE), *streamed(), body(b"")]),
    "per-chunk": ([PerChunk], True, [announcing(START_SSE), *streamed(), body(b"")]),
    "iterator": ([Iterator], True, [announcing(START_SSE), *streamed(), body(b"")]),
    "buffered-json": ([Success], False, [announcing(START_JSON), body(ANSWER)]),
    "held-json": ([Moderation], False, [announcing(START_JSON), body(ANSWER)]),
}


@pytest.mark.parametrize("path", TRAILER_PATHS)
async def test_trailers_reach_the_client_after_the_final_body(path: str) -> None:
    """Regression: on guarded routes the app's http.response.trailers raised in its send and never reached the
    server, which then held the response open waiting for them."""
    hooks, stream, steps = TRAILER_PATHS[path]
    down = Scripted([*steps, TRAILERS])
    script = await drive(LLMHookMiddleware(down, hooks=[hook() for hook in hooks]), stream=stream)
    assert down.send_errors == []
    assert script.sent[0]["trailers"] is True
    assert kinds(script)[-2:] == [("http.response.body", False), ("http.response.trailers", False)]
    assert script.sent[-1] == TRAILERS
    assert_legal(script.sent[:-1])
    assert orjson.loads(script.body) == orjson.loads(ANSWER) if not stream else script.body == STREAM


@pytest.mark.parametrize("hook", ["pre-call", "per-chunk", "iterator"])
async def test_trailers_in_several_messages_keep_their_order(hook: str) -> None:
    first = {"type": "http.response.trailers", "headers": [(b"x-a", b"1")], "more_trailers": True}
    down = Scripted([announcing(START_SSE), *streamed(), body(b""), first, TRAILERS])
    script = await drive(LLMHookMiddleware(down, hooks=[HOOKS[hook]()]))
    assert kinds(script)[-3] == ("http.response.body", False)
    assert script.sent[-2:] == [first, TRAILERS]


@pytest.mark.parametrize("hook", ["pre-call", "per-chunk", "iterator"])
async def test_trailers_announced_by_an_app_that_raised_are_ended_for_it(hook: str) -> None:
    """The app broke mid-stream, so it sends no trailers: the response still ends (empty trailers after the error
    event), instead of the server waiting for them forever."""
    down = Scripted([announcing(START_SSE), *streamed(EVENTS[:2])], then_raise=RuntimeError("x"))
    script = await drive(LLMHookMiddleware(down, hooks=[HOOKS[hook]()]))
    if script.status == 500:  # an iterator hook still held every chunk: the client gets the plain error
        assert_legal(script.sent)
        return
    assert script.sent[-1] == NO_TRAILERS
    assert_legal(script.sent[:-1])
    assert b'data: {"error":' in script.body


async def test_trailers_announced_and_not_sent_are_ended_when_the_app_returns() -> None:
    down = Scripted([announcing(START_SSE), *streamed(), body(b"")])
    script = await drive(LLMHookMiddleware(down, hooks=[PerChunk()]))
    assert script.sent[-1] == NO_TRAILERS


async def test_trailers_after_an_answer_the_middleware_wrote_are_not_sent() -> None:
    """A failure hook replaced the app's error: the client's start announced no trailers, so the app's are
    dropped (sending them would be illegal)."""

    class Replace:
        async def async_post_call_failure_hook(self, request_data: Any, original_exception: Any,
                                               user_api_key_dict: Any) -> Any:
            return _Teapot("replaced")

    error = b'{"error": {"message": "no"}}'
    start = {"type": "http.response.start", "status": 400, "trailers": True,
             "headers": [(b"content-type", b"application/json")]}
    down = Scripted([start, body(error), TRAILERS])
    script = await drive(LLMHookMiddleware(down, hooks=[Replace()]), stream=False)
    assert_legal(script.sent)
    assert script.status == 418


class _Teapot(Exception):
    status_code = 418


async def test_trailers_reach_the_client_through_hypercorn_over_http2() -> None:
    """On the wire: hypercorn holds an HTTP/2 response open until the trailers a start announced arrive."""
    app = LLMHookMiddleware(Scripted([announcing(START_SSE), *streamed(), body(b""), TRAILERS]), hooks=[PerChunk()])
    async with serve_hypercorn(app) as base_url, httpx.AsyncClient(
        base_url=base_url, http1=False, http2=True, timeout=5
    ) as client:
        response = await client.post("/v1/chat/completions", json=chat(stream=True), headers={"te": "trailers"})
    assert response.http_version == "HTTP/2"
    assert (response.status_code, response.content) == (200, STREAM)


# -- a BOM before [DONE] -----------------------------------------------------------------------------------------


async def test_iterator_hook_keeps_a_leading_bom_at_the_start_of_the_stream() -> None:
    """Regression: a BOM-prefixed first [DONE] followed by more events was moved to the end with its BOM, where a
    client no longer strips it and misses the [DONE] (found by test_arbitrary_sse_streams_in_arbitrary_chunks)."""
    bom = b"\xef\xbb\xbf"
    down = Scripted([START_SSE, body(bom + b"data: [DONE]\n\n" + EVENTS[0], True), body(b"")])
    script = await drive(LLMHookMiddleware(down, hooks=[Iterator()]))
    assert_legal(script.sent)
    assert script.body == bom + EVENTS[0] + b"data: [DONE]\n\n"


# -- the same while moderation holds the response ----------------------------------------------------------------


MODERATED = {"pass-through": [Moderation], "per-chunk": [Moderation, PerChunk], "iterator": [Moderation, Iterator]}


@pytest.mark.parametrize("hooks", MODERATED)
async def test_held_by_moderation_an_app_returning_without_its_final_body_keeps_every_event(hooks: str) -> None:
    script = await drive(LLMHookMiddleware(Scripted([START_SSE, *streamed()]), hooks=[h() for h in MODERATED[hooks]]))
    assert_legal(script.sent)
    assert script.body == STREAM


@pytest.mark.parametrize("hooks", MODERATED)
async def test_held_by_moderation_an_app_raising_after_its_done_ends_the_stream_cleanly(hooks: str) -> None:
    down = Scripted([START_SSE, *streamed()], then_raise=RuntimeError("cleanup failed"))
    script = await drive(LLMHookMiddleware(down, hooks=[h() for h in MODERATED[hooks]]))
    assert_legal(script.sent)
    assert script.body == STREAM


@pytest.mark.parametrize("hooks", MODERATED)
async def test_held_by_moderation_an_sse_start_alone_is_a_legal_empty_stream(hooks: str) -> None:
    script = await drive(LLMHookMiddleware(Scripted([START_SSE]), hooks=[h() for h in MODERATED[hooks]]))
    assert kinds(script) == [("http.response.start", False), ("http.response.body", False)]
    assert (script.status, script.body) == (200, b"")


# -- the stream's own end in the formats without [DONE] ---------------------------------------------------------


def named(payload: dict[str, Any]) -> bytes:
    return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


ANTHROPIC_STREAM = [named(event) for event in (
    {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                                          "content": [], "stop_reason": None, "stop_sequence": None,
                                          "usage": {"input_tokens": 1, "output_tokens": 0}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 1}},
    {"type": "message_stop"},
)]
RESPONSES_STREAM = [named(event) for event in (
    {"type": "response.created", "sequence_number": 0,
     "response": {"id": "resp_1", "object": "response", "status": "in_progress", "model": "m", "output": []}},
    {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1", "output_index": 0,
     "content_index": 0, "delta": "hi"},
    {"type": "response.completed", "sequence_number": 2,
     "response": {"id": "resp_1", "object": "response", "status": "completed", "model": "m", "output": []}},
)]
NAMED_STREAMS = {
    "anthropic": ("/v1/messages", {"model": "m", "max_tokens": 5, "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]}, ANTHROPIC_STREAM),
    "responses": ("/v1/responses", {"model": "m", "input": "hi", "stream": True}, RESPONSES_STREAM),
}


@pytest.mark.parametrize("hook", ["pre-call", "per-chunk", "iterator"])
@pytest.mark.parametrize("api", NAMED_STREAMS)
async def test_app_raising_after_its_streams_last_event_ends_the_stream_cleanly(api: str, hook: str) -> None:
    """As after [DONE]: after Anthropic's message_stop or the Responses API's response.completed the stream is
    over for the client; an error event after it would make the SDK raise on a message it had received whole."""
    path, request, events = NAMED_STREAMS[api]
    down = Scripted([START_SSE, *streamed(events)], then_raise=RuntimeError("cleanup failed"))
    app = LLMHookMiddleware(down, hooks=[HOOKS[hook]()])
    script = Script(body_messages(orjson.dumps(request)))
    await asyncio.wait_for(app(http_scope(path), script.receive, script.send), 5)
    assert_legal(script.sent)
    assert script.status == 200
    assert script.body == b"".join(events)


@pytest.mark.parametrize("hook", ["pre-call", "per-chunk"])
async def test_app_raising_before_message_stop_still_gets_the_error_event(hook: str) -> None:
    path, request, events = NAMED_STREAMS["anthropic"]
    down = Scripted([START_SSE, *streamed(events[:3])], then_raise=RuntimeError("x"))
    script = Script(body_messages(orjson.dumps(request)))
    await asyncio.wait_for(LLMHookMiddleware(down, hooks=[HOOKS[hook]()])(http_scope(path), script.receive,
                                                                          script.send), 5)
    assert_legal(script.sent)
    assert script.body.startswith(b"".join(events[:3])) and b"event: error" in script.body
