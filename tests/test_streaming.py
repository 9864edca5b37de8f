"""Streamed responses: pass-through, per-chunk and iterator hooks, mid-stream errors and refusals, disconnects
(docs/reference.md#hooks, #refusals, #errors, #streaming). Asserted on exact ASGI message lists."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import fastapi
import httpx
import openai
import orjson
import pytest

from asgi_llm_guard import LLMHookMiddleware, RejectRequest
from asgi_llm_guard.sse import SSEParser

from .apps import Script, body_messages, chat, chat_chunk, http_scope, sse, text_chunk


def stream_app(
    events: list[bytes],
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    delay: float = 0.0,
    record: dict[str, Any] | None = None,
) -> Any:
    record = record if record is not None else {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        record["state"] = "running"
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": headers or [(b"content-type", b"text/event-stream")],
                }
            )
            for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
                if delay:
                    await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            record["state"] = "finished"
        except asyncio.CancelledError:
            record["state"] = "cancelled"
            raise

    return app


WORDS = ["Hel", "lo", " wor", "ld"]
CHAT_EVENTS = sse([chat_chunk("m", w) for w in WORDS] + [chat_chunk("m", None, "stop")])
TEXT_EVENTS = sse([text_chunk("m", w) for w in WORDS] + [text_chunk("m", "", "stop")])


async def drive(app: Any, body: dict[str, Any] | None = None, path: str = "/v1/chat/completions") -> Script:
    script = Script(body_messages(orjson.dumps(body or chat(stream=True))))
    await app(http_scope(path), script.receive, script.send)
    return script


def payloads(body: bytes) -> list[Any]:
    out: list[Any] = []
    for event in SSEParser().feed(body):
        if event.is_done:
            out.append("[DONE]")
        elif event.data is not None and event.data.startswith(b"{"):
            out.append(orjson.loads(event.data))
    return out


class PreCall:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> None:
        return None


async def test_without_streaming_hooks_every_app_message_passes_through_as_sent() -> None:
    script = await drive(LLMHookMiddleware(stream_app(CHAT_EVENTS), hooks=[PreCall()]))
    bodies = [m["body"] for m in script.sent[1:]]
    assert bodies == [*CHAT_EVENTS, b""]
    assert [m["more_body"] for m in script.sent[1:]] == [True] * len(CHAT_EVENTS) + [False]


class Upper:
    def __init__(self, fail_on: int | None = None, error: Exception | None = None) -> None:
        self.calls = 0
        self.fail_on, self.error = fail_on, error

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.calls += 1
        if self.calls == self.fail_on:
            raise self.error or ValueError("broken")
        choice = response["choices"][0]
        if "delta" in choice and choice["delta"].get("content"):
            choice["delta"]["content"] = choice["delta"]["content"].upper()
        if choice.get("text"):
            choice["text"] = choice["text"].upper()
        return None


async def test_per_chunk_hook_rewrites_each_event_in_its_own_message() -> None:
    script = await drive(LLMHookMiddleware(stream_app(CHAT_EVENTS), hooks=[Upper()]))
    assert script.sent[0]["type"] == "http.response.start"
    assert len(script.sent) == 1 + len(CHAT_EVENTS) + 1  # one client message per app message, then the end
    chunks = payloads(script.body)
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:-1]] == ["HEL", "LO", " WOR", "LD", None]
    assert chunks[-1] == "[DONE]"


async def test_per_chunk_hook_may_return_a_replacement() -> None:
    class Replace:
        async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
            return {**response, "replaced": True}

    script = await drive(LLMHookMiddleware(stream_app(CHAT_EVENTS), hooks=[Replace()]))
    assert all(c == "[DONE]" or c["replaced"] for c in payloads(script.body))


class UpperReversed:
    async def async_post_call_streaming_hook(self, response: dict, user_api_key_dict: Any) -> Any:
        return await Upper().async_post_call_streaming_hook(user_api_key_dict, response)


class UpperKeywords:
    async def async_post_call_streaming_hook(self, *, user_api_key_dict: Any, response: dict) -> Any:
        return await Upper().async_post_call_streaming_hook(user_api_key_dict, response)


class UpperSync:
    def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        choice = response["choices"][0]
        if choice["delta"].get("content"):
            choice["delta"]["content"] = choice["delta"]["content"].upper()
        return None


@pytest.mark.parametrize(
    ("hook", "options"),
    [
        (Upper(), {}),  # LiteLLM's signature: the call inlined per chunk
        (UpperReversed(), {}),
        (UpperKeywords(), {}),
        (UpperSync(), {}),
        (Upper(), {"hook_timeout": 5.0}),  # bounded: through run_hook
    ],
    ids=["litellm-signature", "reversed", "keyword-only", "sync", "with-timeout"],
)
async def test_every_hook_shape_rewrites_the_same_stream(hook: Any, options: dict[str, Any]) -> None:
    script = await drive(LLMHookMiddleware(stream_app(CHAT_EVENTS), hooks=[hook], **options))
    assert len(script.sent) == 1 + len(CHAT_EVENTS) + 1
    chunks = payloads(script.body)
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:-1]] == ["HEL", "LO", " WOR", "LD", None]
    assert chunks[-1] == "[DONE]"


async def test_events_split_across_messages_and_non_json_events_pass_through() -> None:
    raw = b": keep-alive\n\n" + b"".join(CHAT_EVENTS[:2]) + b"event: ping\ndata: not json\n\n" + CHAT_EVENTS[2]
    pieces = [raw[i : i + 7] for i in range(0, len(raw), 7)]
    script = await drive(LLMHookMiddleware(stream_app(pieces), hooks=[Upper()]))
    assert b": keep-alive\n\n" in script.body
    assert b"event: ping\ndata: not json\n\n" in script.body
    assert [c["choices"][0]["delta"]["content"] for c in payloads(script.body) if isinstance(c, dict)] == [
        "HEL",
        "LO",
        " WOR",
    ]


async def test_content_length_of_a_rewritten_stream_is_dropped() -> None:
    body = b"".join(CHAT_EVENTS)
    headers = [(b"content-type", b"text/event-stream"), (b"content-length", str(len(body)).encode())]
    script = await drive(LLMHookMiddleware(stream_app([body], headers=headers), hooks=[Upper()]))
    assert all(name != b"content-length" for name, _ in script.sent[0]["headers"])


async def test_text_completion_stream_goes_through_the_hook() -> None:
    app = LLMHookMiddleware(stream_app(TEXT_EVENTS), hooks=[Upper()])
    script = await drive(app, {"model": "m", "prompt": "x", "stream": True}, "/v1/completions")
    assert [c["choices"][0]["text"] for c in payloads(script.body)[:-1]] == ["HEL", "LO", " WOR", "LD", ""]


async def test_error_mid_stream_ends_with_an_error_event_and_done() -> None:
    failures: list[BaseException] = []

    class Watch(Upper):
        async def async_post_call_failure_hook(
            self, request_data: dict, original_exception: Exception, user_api_key_dict: Any
        ) -> None:
            failures.append(original_exception)

    record: dict[str, Any] = {}
    script = await drive(LLMHookMiddleware(stream_app(CHAT_EVENTS, record=record), hooks=[Watch(fail_on=3)]))
    chunks = payloads(script.body)
    assert [c["choices"][0]["delta"]["content"] for c in chunks[:2]] == ["HEL", "LO"]
    assert chunks[2] == {
        "error": {
            "message": "streaming hook Watch failed",
            "type": "internal_server_error",
            "param": None,
            "code": "500",
        }
    }
    assert chunks[3] == "[DONE]" and len(chunks) == 4
    assert script.sent[-1]["more_body"] is False
    assert [m["type"] for m in script.sent].count("http.response.start") == 1
    assert record["state"] == "running"  # the app was stopped: its send raised, it never finished
    assert [type(f) for f in failures] == [ValueError]


class LaterChunk:
    """A per-chunk hook that misbehaves on its third chunk: after the first, the rewriter's per-event fast path
    handles each chunk, so these failures exercise it."""

    def __init__(self, result: Any) -> None:
        self.calls, self.result = 0, result

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.calls += 1
        return self.result if self.calls == 3 else None


@pytest.mark.parametrize("hooks", [1, 2], ids=["one hook", "two hooks"])
@pytest.mark.parametrize(
    ("result", "message"),
    [("not a dict", "streaming hook LaterChunk failed"), ({"bad": {1, 2}}, "streaming hook LaterChunk failed")],
    ids=["wrong type", "not JSON"],
)
async def test_a_hook_failing_on_a_later_chunk_ends_the_stream_with_an_error_event(
    result: Any, message: str, hooks: int
) -> None:
    chain: list[Any] = [LaterChunk(result)]
    if hooks == 2:
        chain.insert(0, Upper())
    script = await drive(LLMHookMiddleware(stream_app(CHAT_EVENTS), hooks=chain))
    chunks = payloads(script.body)
    assert len(chunks) == 4 and chunks[3] == "[DONE]"
    assert chunks[2]["error"]["message"] == message
    assert script.sent[-1]["more_body"] is False


async def test_later_events_that_are_not_json_objects_pass_through_byte_for_byte() -> None:
    odd = [b"data: {not json}\n\n", b"data: {\"a\": 1}\r\n\r\n", b"data: {\"split\": \r 1}\n\n", b"data: [1, 2]\n\n"]
    events = [CHAT_EVENTS[0], *odd, CHAT_EVENTS[1]]

    class Tag:
        async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
            return {**response, "tagged": True}

    script = await drive(LLMHookMiddleware(stream_app(events), hooks=[Tag()]))
    bodies = [m["body"] for m in script.sent[1:-1]]
    assert bodies[1] == b"data: {not json}\n\n"
    assert bodies[2] == b'data: {"a":1,"tagged":true}\n\n'  # a JSON object with CRLF endings, re-encoded with LF
    assert bodies[3] == odd[2]  # a CR splits the event into two lines: the data is not JSON
    assert bodies[4] == odd[3]
    assert orjson.loads(bodies[5][6:])["tagged"] is True


class Tagged:
    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        return {**response, "tagged": True}


@pytest.mark.parametrize(
    ("hook", "contents"),
    [(Upper(), ["HEL", "LO", " WOR"]), (Tagged(), ["Hel", "lo", " wor"])],
    ids=["returns None", "returns a dict"],
)
async def test_a_rewritten_event_keeps_its_retry_field(hook: Any, contents: list[str]) -> None:
    """Regression: re-encoding a JSON event dropped its `retry:` line (docs/reference.md#sse-parsing lists it among the
    fields kept)."""
    events = [b"retry: 1500\n" + CHAT_EVENTS[0], b"id: 7\r\nretry: 300\r\n" + CHAT_EVENTS[1].replace(b"\n", b"\r\n")]
    script = await drive(LLMHookMiddleware(stream_app([*events, CHAT_EVENTS[2]]), hooks=[hook]))
    parsed = SSEParser().feed(script.body)
    assert [(event.id, event.retry) for event in parsed] == [(None, 1500), ("7", 300), (None, None)]
    assert [c["choices"][0]["delta"]["content"] for c in payloads(script.body)] == contents


async def test_error_on_the_first_chunk_is_a_json_error_with_the_real_status() -> None:
    hook = Upper(fail_on=1, error=fastapi.HTTPException(403, detail="not allowed"))
    script = await drive(LLMHookMiddleware(stream_app(CHAT_EVENTS), hooks=[hook]))
    assert script.status == 403
    assert orjson.loads(script.body)["error"]["message"] == "not allowed"
    assert (b"x-llm-guard-rejected", b"streaming") in script.sent[0]["headers"]
    assert [m["type"] for m in script.sent] == ["http.response.start", "http.response.body"]


async def test_refusal_mid_chat_stream_ends_like_a_normal_stream() -> None:
    hook = Upper(fail_on=3, error=RejectRequest("stopped here"))
    script = await drive(LLMHookMiddleware(stream_app(CHAT_EVENTS), hooks=[hook]))
    chunks = payloads(script.body)
    assert chunks[-1] == "[DONE]"
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[:-1]]
    assert contents == ["HEL", "LO", "stopped here", None]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]].count("stop") == 1
    assert {c["id"] for c in chunks[:-1]} == {"chatcmpl-down"}


async def test_refusal_mid_text_stream_keeps_the_message_in_text() -> None:
    hook = Upper(fail_on=2, error=RejectRequest("stopped here"))
    app = LLMHookMiddleware(stream_app(TEXT_EVENTS), hooks=[hook])
    script = await drive(app, {"model": "m", "prompt": "x", "stream": True}, "/v1/completions")
    chunks = payloads(script.body)
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["HEL", "stopped here", ""]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, "stop"]


async def test_refusal_on_the_first_chunk_is_a_complete_streamed_refusal() -> None:
    hook = Upper(fail_on=1, error=RejectRequest("no stream for you"))
    script = await drive(LLMHookMiddleware(stream_app(CHAT_EVENTS), hooks=[hook]))
    assert (b"x-llm-guard-rejected", b"streaming") in script.sent[0]["headers"]
    chunks = payloads(script.body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "no stream for you"}
    assert chunks[0]["model"] == "gpt-test"


class Reroute:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> None:
        data["model"] = "internal-model"


def echo_model_app(text: bool) -> Any:
    """Streams chunks naming the model the request it received asked for, as a real provider does."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        model = orjson.loads((await receive())["body"])["model"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for event in sse(text_chunk(model, w) if text else chat_chunk(model, w) for w in WORDS):
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_refusal_mid_stream_names_the_model_the_client_asked_for(path: str) -> None:
    """Regression: the refusal chunk took the app's `model` from its first chunk, here the one a hook routed to."""
    text = path == "/v1/completions"
    request = {"model": "m", "prompt": "x", "stream": True} if text else chat(stream=True)
    app = LLMHookMiddleware(echo_model_app(text), hooks=[Reroute(), Upper(fail_on=3, error=RejectRequest("no"))])
    chunks = payloads((await drive(app, request, path)).body)
    assert [c["model"] for c in chunks[:-1]] == ["internal-model"] * 2 + [request["model"]] * 2
    assert [c["id"] for c in chunks[:-1]] == [chunks[0]["id"]] * 4
    assert [c["created"] for c in chunks[:-1]] == [1700000000] * 4


USAGE_CHUNK = {
    "id": "chatcmpl-down",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "m",
    "choices": [],
    "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5},
}


class RefuseOnUsage:
    """A cost guard: refuses once the usage chunk, after the finish chunk, shows the tokens spent."""

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        if response.get("usage"):
            raise RejectRequest("over budget")
        return None


class RefuseAtTheEnd:
    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: AsyncIterator[dict], request_data: dict
    ) -> AsyncIterator[dict]:
        async for chunk in response:
            yield chunk
        raise RejectRequest("withheld at the end")


def finish_reasons(chunks: list[Any]) -> list[str]:
    return [c["choices"][0]["finish_reason"] for c in chunks if c != "[DONE]" and c["choices"]]


@pytest.mark.parametrize("split", ["one event per message", "split events"])
async def test_refusal_after_the_finish_chunk_adds_no_second_one(split: str) -> None:
    """Regression: a refusal on the usage chunk sent a second finish chunk (docs/reference.md#stream-refusals: exactly
    one)."""
    events = [*CHAT_EVENTS[:-1], *sse([USAGE_CHUNK])]
    if split == "split events":  # the general path instead of the per-chunk fast path
        raw = b"".join(events)
        events = [raw[i : i + 50] for i in range(0, len(raw), 50)]
    script = await drive(LLMHookMiddleware(stream_app(events), hooks=[RefuseOnUsage()]))
    chunks = payloads(script.body)
    assert chunks[-1] == "[DONE]"
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:-1]] == [*WORDS, None, "over budget"]
    assert finish_reasons(chunks) == [None, None, None, None, "stop", None]
    assert script.sent[-1]["more_body"] is False


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_iterator_refusal_after_the_finish_chunk_adds_no_second_one(path: str) -> None:
    chat_stream = path == "/v1/chat/completions"
    request = chat(stream=True) if chat_stream else {"model": "m", "prompt": "x", "stream": True}
    app = LLMHookMiddleware(stream_app(CHAT_EVENTS if chat_stream else TEXT_EVENTS), hooks=[RefuseAtTheEnd()])
    chunks = payloads((await drive(app, request, path)).body)
    assert chunks[-1] == "[DONE]"
    assert finish_reasons(chunks) == [None, None, None, None, "stop", None]
    last = chunks[-2]["choices"][0]
    assert (last["delta"]["content"] if chat_stream else last["text"]) == "withheld at the end"


class Pairs:
    """An iterator hook that buffers chunks two at a time, as a windowed output filter would."""

    def __init__(self, fail_at_window: int | None = None) -> None:
        self.fail_at_window = fail_at_window

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: AsyncIterator[dict], request_data: dict
    ) -> AsyncIterator[dict]:
        window: list[dict] = []
        windows = 0
        async for chunk in response:
            window.append(chunk)
            if len(window) == 2:
                windows += 1
                if windows == self.fail_at_window:
                    raise RuntimeError("iterator broke")
                for item in window:
                    yield item
                window = []
        for item in window:
            yield item


async def test_iterator_hooks_chain_before_the_per_chunk_hook() -> None:
    seen: list[str] = []

    class Tag:
        async def async_post_call_streaming_iterator_hook(
            self, user_api_key_dict: Any, response: Any, request_data: dict
        ) -> AsyncIterator[dict]:
            async for chunk in response:
                seen.append("tag")
                chunk["tagged"] = True
                yield chunk

    script = await drive(LLMHookMiddleware(stream_app(CHAT_EVENTS), hooks=[Pairs(), Tag(), Upper()]))
    chunks = payloads(script.body)
    assert chunks[-1] == "[DONE]"
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:-1]] == ["HEL", "LO", " WOR", "LD", None]
    assert all(c["tagged"] for c in chunks[:-1])
    assert script.sent[-1]["more_body"] is False


async def test_iterator_hook_error_mid_stream_ends_cleanly() -> None:
    script = await drive(
        LLMHookMiddleware(stream_app(CHAT_EVENTS, delay=0.01), hooks=[Pairs(), Pairs(fail_at_window=2)])
    )
    chunks = payloads(script.body)
    assert chunks[-2]["error"]["message"] == "streaming hook Pairs failed"
    assert chunks[-1] == "[DONE]"
    assert script.sent[-1]["more_body"] is False


async def test_iterator_hook_failing_before_output_is_a_json_error() -> None:
    script = await drive(LLMHookMiddleware(stream_app(CHAT_EVENTS), hooks=[Pairs(fail_at_window=1)]))
    assert script.status == 500
    assert orjson.loads(script.body)["error"]["message"] == "streaming hook Pairs failed"


async def test_per_chunk_hook_timeout_bounds_each_call() -> None:
    class Slow:
        timeout = 0.05

        async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> None:
            await asyncio.sleep(1)

    script = await drive(LLMHookMiddleware(stream_app(CHAT_EVENTS), hooks=[Slow()]))
    assert script.status == 503
    assert orjson.loads(script.body)["error"]["type"] == "timeout_error"


@pytest.mark.parametrize("with_hook", [False, True])
async def test_client_disconnect_mid_stream_cancels_the_app_and_leaves_no_task(with_hook: bool) -> None:
    failures: list[BaseException] = []

    class Watch:
        async def async_post_call_failure_hook(
            self, request_data: dict, original_exception: Exception, user_api_key_dict: Any
        ) -> None:
            failures.append(original_exception)

    record: dict[str, Any] = {}
    endless = [b"data: " + orjson.dumps(chat_chunk("m", "x")) + b"\n\n"] * 1000
    hooks: list[Any] = [Watch(), Pairs()] if with_hook else [Watch()]
    app = LLMHookMiddleware(stream_app(endless, delay=0.01, record=record), hooks=hooks)
    before = asyncio.all_tasks()
    script = Script(body_messages(orjson.dumps(chat(stream=True))))
    task = asyncio.ensure_future(app(http_scope(), script.receive, script.send))
    while len(script.sent) < 4:
        await asyncio.sleep(0.01)
    script.disconnect.set()
    await asyncio.wait_for(task, 1)
    await asyncio.sleep(0)
    assert record["state"] == "cancelled"
    assert [getattr(f, "status_code", None) for f in failures] == [499]
    assert asyncio.all_tasks() - before == set()


async def test_client_disconnect_while_a_pre_call_hook_runs_cancels_the_hook() -> None:
    state: dict[str, Any] = {}

    class Slow:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> None:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                state["cancelled"] = True
                raise

    record: dict[str, Any] = {}
    app = LLMHookMiddleware(stream_app(CHAT_EVENTS, record=record), hooks=[Slow()])
    script = Script(body_messages(orjson.dumps(chat(stream=True))))
    task = asyncio.ensure_future(app(http_scope(), script.receive, script.send))
    await asyncio.sleep(0.05)
    script.disconnect.set()
    await asyncio.wait_for(task, 1)
    assert state == {"cancelled": True}
    assert record == {} and script.sent == []


async def test_app_that_raises_after_streaming_started_gets_error_event_without_streaming_hooks() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": CHAT_EVENTS[0], "more_body": True})
        raise ConnectionError("upstream reset")

    script = await drive(LLMHookMiddleware(app, hooks=[PreCall()]))
    chunks = payloads(script.body)
    assert chunks[-2]["error"]["code"] == "500" and chunks[-1] == "[DONE]"
    assert script.sent[-1]["more_body"] is False


def named(payload: dict[str, Any]) -> bytes:
    return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def responses_stream(reasoning: bool = False) -> list[bytes]:
    """A whole Responses API stream: a message saying "Sure, the secret is" (after a reasoning item, if asked),
    its events numbered and its items at the output_index they have in a real stream."""
    response = {"id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress", "model": "gpt-4o",
                "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
    at = {"item_id": "msg_1", "output_index": int(reasoning), "content_index": 0}
    item = {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "Sure, the secret is", "annotations": []}
    done = {**item, "status": "completed", "content": [part]}
    thought = {"type": "reasoning", "id": "rs_1", "summary": []}
    output = [thought, done] if reasoning else [done]
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": response},
        *(
            [
                {"type": "response.output_item.added", "output_index": 0, "item": thought},
                {"type": "response.output_item.done", "output_index": 0, "item": thought},
            ]
            if reasoning
            else []
        ),
        {"type": "response.output_item.added", "output_index": at["output_index"], "item": item},
        {"type": "response.content_part.added", **at, "part": {**part, "text": ""}},
        {"type": "response.output_text.delta", **at, "delta": "Sure, "},
        {"type": "response.output_text.delta", **at, "delta": "the secret is"},
        {"type": "response.output_text.done", **at, "text": part["text"]},
        {"type": "response.content_part.done", **at, "part": part},
        {"type": "response.output_item.done", "output_index": at["output_index"], "item": done},
        {"type": "response.completed", "response": {**response, "status": "completed", "output": output}},
    ]
    return [named({"type": event["type"], "sequence_number": n, **event}) for n, event in enumerate(events)]


class RefuseAt:
    """Refuses the ``nth`` event of type ``kind``."""

    def __init__(self, kind: str, nth: int = 1) -> None:
        self.kind, self.left = kind, nth

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        if response["type"] == self.kind:
            self.left -= 1
            if self.left == 0:
                raise RejectRequest("[withheld]")
        return None


REFUSED_AT = {  # where a hook refuses: (the event it refuses, the text the client ends up with)
    "second text delta": (("response.output_text.delta", 2), "Sure, [withheld]"),
    "text done": (("response.output_text.done", 1), "Sure, the secret is[withheld]"),
    "item done": (("response.output_item.done", 1), "Sure, the secret is[withheld]"),
    "completed": (("response.completed", 1), "Sure, the secret is[withheld]"),
}


def refusing(where: str, reasoning: bool) -> RefuseAt:
    (kind, nth), _ = REFUSED_AT[where]
    if reasoning and kind == "response.output_item.done":
        nth += 1  # the reasoning item's comes first
    return RefuseAt(kind, nth)


@pytest.mark.parametrize("reasoning", [False, True], ids=["message only", "reasoning first"])
@pytest.mark.parametrize("where", list(REFUSED_AT))
async def test_responses_stream_refused_anywhere_closes_every_item_it_opened(where: str, reasoning: bool) -> None:
    """Regression: the closing events always said output_index 0, opened a second item there once the message's
    part had closed, and response.completed listed the refusal's message alone."""
    app = LLMHookMiddleware(stream_app(responses_stream(reasoning)), hooks=[refusing(where, reasoning)])
    script = await drive(app, {"model": "gpt-4o", "input": "x", "stream": True}, "/v1/responses")
    data = [orjson.loads(event.data) for event in SSEParser().feed(script.body)]
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    added = [(d["output_index"], d["item"]["id"]) for d in data if d["type"] == "response.output_item.added"]
    done = [(d["output_index"], d["item"]["id"]) for d in data if d["type"] == "response.output_item.done"]
    assert [index for index, _ in added] == list(range(len(added)))  # each item at an index of its own
    assert sorted(done) == added  # and each one finished
    refusal = next(d for d in data if d.get("delta") == "[withheld]")
    message = dict(added)[refusal["output_index"]]
    assert refusal["item_id"] == message and message.startswith("msg_")
    assert all(d["output_index"] == refusal["output_index"] for d in data[data.index(refusal) :] if "output_index" in d)
    assert data[-1]["type"] == "response.completed"
    assert [item["id"] for item in data[-1]["response"]["output"]] == [item_id for _, item_id in added]


@pytest.mark.parametrize("reasoning", [False, True], ids=["message only", "reasoning first"])
@pytest.mark.parametrize("where", list(REFUSED_AT))
async def test_responses_stream_refused_anywhere_parses_in_the_openai_sdk(where: str, reasoning: bool) -> None:
    text = REFUSED_AT[where][1]
    app = LLMHookMiddleware(stream_app(responses_stream(reasoning)), hooks=[refusing(where, reasoning)])
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    async with openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http, max_retries=0) as client:
        async with client.responses.stream(model="gpt-4o", input="x") as stream:
            deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
            final = await stream.get_final_response()
    assert deltas[-1] == "[withheld]"
    assert final.output_text == text
    messages = 2 if where == "completed" else 1  # once the app's message finished, the refusal is one of its own
    assert [item.type for item in final.output] == ["reasoning"] * reasoning + ["message"] * messages


class FailAt:
    """Raises ``error`` on the ``nth`` event."""

    def __init__(self, nth: int, error: Exception) -> None:
        self.left, self.error = nth, error

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.left -= 1
        if self.left == 0:
            raise self.error
        return None


async def test_responses_stream_error_midway_is_its_error_event_with_the_envelope_and_done() -> None:
    """Regression: the Responses API's error event alone, without `"error"` or `[DONE]`: the openai SDK took it
    for one more event of the stream instead of raising (docs/reference.md#stream-errors)."""
    hook = FailAt(3, fastapi.HTTPException(429, "slow down"))
    app = LLMHookMiddleware(stream_app(responses_stream()), hooks=[hook])
    script = await drive(app, {"model": "gpt-4o", "input": "x", "stream": True}, "/v1/responses")
    parsed = SSEParser().feed(script.body)
    assert [event.event for event in parsed] == [
        "response.created",
        "response.output_item.added",
        "error",
        None,
    ]
    assert orjson.loads(parsed[2].data or b"") == {
        "type": "error",
        "code": "429",
        "message": "slow down",
        "param": None,
        "sequence_number": 2,
        "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "429"},
    }
    assert parsed[3].is_done and script.sent[-1]["more_body"] is False


async def raises_after_the_start(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for event in responses_stream()[:4]:
        await send({"type": "http.response.body", "body": event, "more_body": True})
    raise ConnectionError("upstream reset")


BREAKS = {  # how a Responses API stream breaks after it started: the guarded app, the message the client gets
    "hook raises 429": (lambda: [FailAt(3, fastapi.HTTPException(429, "slow down"))], "slow down"),
    "app raises": (lambda: [PreCall()], "The downstream app failed while handling the request."),
    "app raises under a streaming hook": (lambda: [Tagged()], "The downstream app failed while handling the request."),
}


@pytest.mark.parametrize("how", ["create", "stream"])
@pytest.mark.parametrize("breaks", list(BREAKS))
async def test_responses_stream_error_midway_raises_api_error_in_the_openai_sdk(breaks: str, how: str) -> None:
    hooks, message = BREAKS[breaks]
    app = stream_app(responses_stream()) if breaks == "hook raises 429" else raises_after_the_start
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=LLMHookMiddleware(app, hooks=hooks())))
    seen: list[str] = []
    async with openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http, max_retries=0) as client:
        with pytest.raises(openai.APIError) as raised:
            if how == "create":
                async for event in await client.responses.create(model="gpt-4o", input="x", stream=True):
                    seen.append(event.type)
            else:
                async with client.responses.stream(model="gpt-4o", input="x") as stream:
                    async for event in stream:
                        seen.append(event.type)
    assert raised.value.message == message
    assert seen[:2] == ["response.created", "response.output_item.added"]


async def test_responses_stream_refused_midway_closes_with_the_message() -> None:
    response = {"id": "resp_1", "object": "response", "status": "in_progress", "model": "gpt-4o", "output": []}
    events = [
        named({"type": "response.created", "sequence_number": 0, "response": response}),
        named(
            {
                "type": "response.output_item.added",
                "sequence_number": 1,
                "output_index": 0,
                "item": {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []},
            }
        ),
        named(
            {
                "type": "response.content_part.added",
                "sequence_number": 2,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            }
        ),
        named(
            {
                "type": "response.output_text.delta",
                "sequence_number": 3,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": "Sure, ",
            }
        ),
        named(
            {
                "type": "response.output_text.delta",
                "sequence_number": 4,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": "the secret is",
            }
        ),
    ]

    class Stop:
        async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
            if response.get("delta") == "the secret is":
                raise RejectRequest("[withheld]")
            return None

    app = LLMHookMiddleware(stream_app(events), hooks=[Stop()])
    script = await drive(app, {"model": "gpt-4o", "input": "x", "stream": True}, "/v1/responses")
    parsed = SSEParser().feed(script.body)
    names = [e.event for e in parsed]
    assert names == [
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    data = [orjson.loads(e.data) for e in parsed]
    assert data[4]["delta"] == "[withheld]" and data[4]["item_id"] == "msg_1"
    assert [d["sequence_number"] for d in data] == list(range(9))
    assert data[5]["text"] == "Sure, [withheld]"
    assert data[-1]["response"]["status"] == "completed"
    assert data[-1]["response"]["id"] == "resp_1"


async def test_fail_open_per_chunk_hook_that_times_out_keeps_the_chunk() -> None:
    class SlowSometimes:
        timeout = 0.05
        fail_open = True

        async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
            if response["choices"][0]["delta"].get("content") == "lo":
                await asyncio.sleep(1)
            response["choices"][0]["delta"]["content"] = "*"
            return response

    script = await drive(LLMHookMiddleware(stream_app(CHAT_EVENTS), hooks=[SlowSometimes()]))
    chunks = payloads(script.body)
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:4]] == ["*", "lo", "*", "*"]


@pytest.mark.parametrize("iterator", [False, True], ids=["per-chunk", "iterator"])
async def test_a_crlf_split_after_its_cr_goes_out_with_its_event_only(iterator: bool) -> None:
    # Regression: the LF of a CRLF arriving in the next message was taken for an extra blank line (or, last, for an
    # unterminated tail): after a re-encoded event it went out as a stray "\n"; after a passed-through one it must
    # still follow it, so the stream stays byte-identical there.
    json_event = b'data: {"a": 1}\r\n\r\n'
    ping = b": ping\r\n\r\n"
    events = [json_event[:-1], json_event[-1:] + ping[:-1], ping[-1:]]

    class Tag:
        async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
            return {**response, "tagged": True}

    class Through:
        async def async_post_call_streaming_iterator_hook(
            self, user_api_key_dict: Any, response: Any, request_data: dict
        ) -> Any:
            async for chunk in response:
                yield chunk

    hooks: list[Any] = [Through(), Tag()] if iterator else [Tag()]
    script = await drive(LLMHookMiddleware(stream_app(events), hooks=hooks))
    out = b"".join(m.get("body", b"") for m in script.sent[1:])
    assert out == b'data: {"a":1,"tagged":true}\n\n' + ping
