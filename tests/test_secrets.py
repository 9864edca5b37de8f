"""Secrets and injection (docs/reference.md#errors, #privacy): no raw API key or request body in any record the package
logs, at any level and on any failing path; refusal and error messages cannot inject SSE frames; exception headers
cannot inject headers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from fastapi import HTTPException

from asgi_llm_guard import LLMHookMiddleware, RejectRequest, UserAPIKeyAuth
from asgi_llm_guard.contrib.moderation_endpoint import ModerationEndpointHook
from asgi_llm_guard.sse import SSEParser

from .apps import Script, body_messages, chat_chunk, http_scope, sse
from .asgi_checks import assert_legal, assert_openai_error
from .servers import SERVERS

KEY = "sk-live-SECRETKEY"
PROMPT = "BODY-SECRET-123"
HEADERS = [
    (b"content-type", b"application/json"),
    (b"authorization", b"Bearer " + KEY.encode()),
    (b"api-key", KEY.encode()),
    (b"x-api-key", KEY.encode()),
]
EVENTS = sse([chat_chunk("m", word) for word in ("one", " two", " three")] + [chat_chunk("m", None, "stop")])


def request_body(stream: bool = False, **extra: Any) -> bytes:
    return orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": f"please keep {PROMPT} safe"}], "stream": stream,
         "user": "u", **extra}
    )


def prompt_of(data: Any) -> str:
    return str(data.get("messages")) if isinstance(data, dict) else str(data)


# -- hooks and apps that fail, quoting what they saw --------------------------------------------------------------


class PreCallQuotes:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        raise ValueError("cannot handle " + prompt_of(data))


class PreCallChains:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        try:
            raise KeyError(prompt_of(data))
        except KeyError as inner:
            raise RuntimeError("wrapped: " + str(inner)) from inner


class PreCallTimesOut:
    def __init__(self, fail_open: bool) -> None:
        self.fail_open = fail_open

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        await asyncio.sleep(10)


class ModerationQuotes:
    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        raise ValueError("moderation choked on " + prompt_of(data))


class SuccessQuotes:
    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        raise ValueError("post-call choked on " + prompt_of(data))


class SuccessReturnsText:
    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        return {"not JSON but the prompt " + prompt_of(data)}  # a set


class ChunkQuotes:
    def __init__(self) -> None:
        self.data: Any = None
        self.calls = 0

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        self.data = data

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.calls += 1
        if self.calls == 2:
            raise ValueError("chunk hook choked on " + prompt_of(self.data))


class IteratorQuotes:
    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: AsyncIterator[dict], request_data: dict
    ) -> AsyncIterator[dict]:
        async for chunk in response:
            yield chunk
            raise ValueError("iterator choked on " + prompt_of(request_data))


class FailureQuotes:
    async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                           user_api_key_dict: Any) -> None:
        raise RuntimeError("failure hook saw " + str(original_exception) + " and " + prompt_of(request_data))


class PassPreCall:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        return None


class HTTPQuotes:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        raise HTTPException(400, detail="bad request: " + prompt_of(data))


@dataclass
class DownstreamRaises:
    """Raises with the body it received in the message: ``when`` is before the start, mid-stream or after the end."""

    when: str
    calls: int = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        received = (await receive())["body"]
        text = received.decode()
        self.calls += 1
        if self.when == "before":
            raise RuntimeError("downstream failed on " + text)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream" if self.when == "mid-stream"
                                 else b"application/json")]})
        if self.when == "mid-stream":
            await send({"type": "http.response.body", "body": EVENTS[0], "more_body": True})
            raise ConnectionError("stream broke on " + text)
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})
        raise RuntimeError("after the end, failed on " + text)


@dataclass
class Answers:
    """A downstream app answering ``status`` with ``body`` (or a stream of EVENTS)."""

    status: int = 200
    body: bytes | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        received = (await receive())["body"]
        stream = orjson.loads(received).get("stream") if received.startswith(b"{") else False
        content_type = b"text/event-stream" if stream and self.body is None else b"application/json"
        await send({"type": "http.response.start", "status": self.status, "headers": [(b"content-type", content_type)]})
        if stream and self.body is None:
            for event in EVENTS:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await send({"type": "http.response.body", "body": self.body or b'{"id": "x", "choices": []}'})


def upstream_error_body() -> bytes:
    return orjson.dumps({"error": {"message": f"model could not handle {PROMPT} for key {KEY}", "type": "x"}})


async def auth_quotes(scope: Any) -> UserAPIKeyAuth:
    presented = dict(scope["headers"])[b"authorization"].decode()
    raise ValueError("unknown key " + presented)


async def auth_rejects(scope: Any) -> UserAPIKeyAuth:
    presented = dict(scope["headers"])[b"authorization"].decode()
    raise HTTPException(401, detail="no such key", headers={"www-authenticate": "Bearer"}) from ValueError(presented)


async def auth_wrong_type(scope: Any) -> Any:
    return {"api_key": dict(scope["headers"])[b"authorization"].decode()}


def moderation_endpoint(status: int, fail_open: bool = False) -> ModerationEndpointHook:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=b"echo: " + request.content)

    return ModerationEndpointHook("https://moderation.test/v1", api_key=KEY, fail_open=fail_open,
                                  transport=httpx.MockTransport(handler))


@dataclass
class Scenario:
    id: str
    app: Any
    hooks: list[Any] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    body: bytes = field(default_factory=request_body)
    path: str = "/v1/chat/completions"
    status: int = 500
    traceback_of: tuple[str, str] | None = None  # (exception type, a function of the traceback) that must be logged
    client_clean: bool = True  # the client's answer must not quote the prompt either


SCENARIOS = [
    Scenario("pre-call hook bug", Answers(), [PreCallQuotes()], traceback_of=("ValueError", "async_pre_call_hook")),
    Scenario("pre-call hook bug, chained", Answers(), [PreCallChains()],
             traceback_of=("RuntimeError", "async_pre_call_hook")),
    Scenario("pre-call hook bug, streamed", Answers(), [PreCallQuotes()], body=request_body(stream=True),
             traceback_of=("ValueError", "async_pre_call_hook")),
    Scenario("pre-call HTTPException quoting the prompt", Answers(), [HTTPQuotes()], status=400, client_clean=False),
    Scenario("pre-call timeout", Answers(), [PreCallTimesOut(False)], {"hook_timeout": 0.02}, status=503),
    Scenario("pre-call timeout, fail open", Answers(), [PreCallTimesOut(True)], {"hook_timeout": 0.02}, status=200),
    Scenario("moderation hook bug", Answers(), [ModerationQuotes()],
             traceback_of=("ValueError", "async_moderation_hook")),
    Scenario("moderation hook bug, moderation first", Answers(), [ModerationQuotes()], {"moderation": "before"},
             traceback_of=("ValueError", "async_moderation_hook")),
    Scenario("post-call hook bug", Answers(), [SuccessQuotes()],
             traceback_of=("ValueError", "async_post_call_success_hook")),
    Scenario("post-call hook returns the prompt in a set", Answers(), [SuccessReturnsText()]),
    Scenario("streaming hook bug mid-stream", Answers(), [ChunkQuotes()], body=request_body(stream=True), status=200,
             traceback_of=("ValueError", "async_post_call_streaming_hook")),
    Scenario("iterator hook bug mid-stream", Answers(), [IteratorQuotes()], body=request_body(stream=True),
             status=200, traceback_of=("ValueError", "async_post_call_streaming_iterator_hook")),
    Scenario("failure hook bug", Answers(), [PreCallQuotes(), FailureQuotes()],
             traceback_of=("RuntimeError", "async_post_call_failure_hook")),
    Scenario("downstream raises before the start", DownstreamRaises("before"), [PassPreCall()],
             traceback_of=("RuntimeError", "__call__")),
    Scenario("downstream raises mid-stream", DownstreamRaises("mid-stream"), [PassPreCall()],
             body=request_body(stream=True), status=200, traceback_of=("ConnectionError", "__call__")),
    Scenario("downstream raises after the end", DownstreamRaises("after"), [PassPreCall()], status=200,
             traceback_of=("RuntimeError", "__call__")),
    Scenario("downstream raises, failure hook quotes it", DownstreamRaises("before"), [FailureQuotes()],
             traceback_of=("RuntimeError", "async_post_call_failure_hook")),
    Scenario("upstream error quoting prompt and key", Answers(500, upstream_error_body()), [FailureQuotes()],
             client_clean=False, traceback_of=("RuntimeError", "async_post_call_failure_hook")),
    Scenario("upstream 429, no hooks touching it", Answers(429, upstream_error_body()), [PassPreCall()], status=429,
             client_clean=False),
    Scenario("body not JSON", Answers(), [PassPreCall(), FailureQuotes()], body=b'{"messages": "' + PROMPT.encode(),
             status=400, traceback_of=("RuntimeError", "async_post_call_failure_hook")),
    Scenario("body not an object", Answers(), [PassPreCall()], body=orjson.dumps([PROMPT, KEY]), status=400),
    Scenario("body with invalid UTF-8", Answers(), [PassPreCall()], body=PROMPT.encode() + b"\xff", status=400),
    Scenario("body too large", Answers(), [PassPreCall()], {"max_body_bytes": 50}, status=413),
    Scenario("user param missing", Answers(), [PassPreCall()], {"enforce_user_param": True},
             body=orjson.dumps({"model": "m", "messages": [{"role": "user", "content": PROMPT}]}), status=400),
    Scenario("auth callable bug quoting the key", Answers(), [PassPreCall()], {"auth": auth_quotes},
             traceback_of=("ValueError", "auth_quotes")),
    Scenario("auth rejects", Answers(), [PassPreCall()], {"auth": auth_rejects}, status=401),
    Scenario("auth returns the wrong type", Answers(), [PassPreCall()], {"auth": auth_wrong_type}),
    Scenario("moderation endpoint fails, echoing the prompt", Answers(), [moderation_endpoint(500)], status=503),
    Scenario("moderation endpoint fails open", Answers(), [moderation_endpoint(400, fail_open=True)], status=200),
]


def record_text(record: logging.LogRecord) -> str:
    formatter = logging.Formatter()
    parts = [record.getMessage(), repr(record.args), record.exc_text or "", record.stack_info or ""]
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    return "\n".join(parts)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
async def test_no_key_or_body_in_any_log_record(scenario: Scenario, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing at INFO or above holds the key or the body (docs/reference.md#privacy); DEBUG is captured too, so the
    test sees every record the package writes, but DEBUG is where an operator who asks for it finds exception text
    (docs/observability.md#logs), which may quote either."""
    caplog.set_level(logging.DEBUG, logger="asgi_llm_guard")
    app = LLMHookMiddleware(scenario.app, hooks=scenario.hooks, **scenario.options)
    script = Script(body_messages(scenario.body))
    await asyncio.wait_for(app(http_scope(scenario.path, headers=list(HEADERS)), script.receive, script.send), 5)
    assert_legal(script.sent)
    assert script.status == scenario.status, script.body
    records = [r for r in caplog.records if r.name == "asgi_llm_guard" or r.name.startswith("asgi_llm_guard.")]
    for record in (r for r in records if r.levelno >= logging.INFO):
        text = record_text(record)
        assert KEY not in text, f"the API key was logged: {text}"
        assert PROMPT not in text, f"the request body was logged: {text}"
    if scenario.traceback_of is not None:
        kind, function = scenario.traceback_of
        texts = [record_text(r) for r in records]
        assert any(kind in text and function in text for text in texts), (
            f"no traceback naming {kind} in {function} was logged: {texts}"
        )
    if scenario.client_clean:
        assert PROMPT.encode() not in script.body and KEY.encode() not in script.body, script.body


async def test_hook_error_text_is_shown_and_logged_only_with_expose_hook_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="asgi_llm_guard")
    for expose in (False, True):
        caplog.clear()
        app = LLMHookMiddleware(Answers(), hooks=[PreCallQuotes()], expose_hook_errors=expose)
        script = Script(body_messages(request_body()))
        await app(http_scope(headers=list(HEADERS)), script.receive, script.send)
        message = assert_openai_error(script.body, 500)["message"]
        assert (PROMPT in message) is expose
        ours = [r for r in caplog.records if r.name.startswith("asgi_llm_guard")]
        logged = "\n".join(record_text(r) for r in ours if r.levelno >= logging.INFO)
        assert "ValueError" in logged and "async_pre_call_hook" in logged
        assert KEY not in logged
        if not expose:
            assert PROMPT not in logged
        debug = [r.getMessage() for r in ours if r.levelno == logging.DEBUG]  # the operator's view: type and text
        if expose:
            assert debug == []  # the ERROR record already has the text
        else:
            (message,) = debug
            assert message.startswith("pre_call hook PreCallQuotes raised ValueError: cannot handle ")
            assert PROMPT in message


# -- SSE and JSON injection through refusal and error messages ----------------------------------------------------

INJECT = 'x"}\n\ndata: [DONE]\n\ndata: {"injected": true}\n\nevent: error\r\ndata: y\r\n\r\nid: 1\rdata: z\r\r'


class RefuseWith:
    def __init__(self, how: str, message: str = INJECT) -> None:
        self.how = how
        self.message = message
        self.chunks = 0

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        if self.how == "pre-call str":
            return self.message
        if self.how == "pre-call raise":
            raise RejectRequest(self.message)
        if self.how == "pre-call http":
            raise HTTPException(403, detail=self.message)
        if self.how == "pre-call bug":
            raise ValueError(self.message)
        return None

    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
        if self.how == "moderation":
            raise RejectRequest(self.message)

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.chunks += 1
        if self.chunks == 2 and self.how == "mid-stream refusal":
            raise RejectRequest(self.message)
        if self.chunks == 2 and self.how == "mid-stream error":
            raise HTTPException(400, detail=self.message)
        return None


def strings(value: Any) -> list[str]:
    """Every string inside a parsed JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return []


def parse_events(body: bytes) -> list[Any]:
    parser = SSEParser()
    events = parser.feed(body)
    assert parser.close() == b"", "the stream ends mid-event"
    return events


STREAM_CASES = [
    ("pre-call str", "/v1/chat/completions", {"messages": []}, 3),
    ("pre-call str", "/v1/chat/completions", {"messages": [], "stream_options": {"include_usage": True}}, 4),
    ("pre-call raise", "/v1/completions", {"prompt": "p"}, 3),
    ("pre-call raise", "/v1/responses", {"input": "p"}, 8),
    ("moderation", "/v1/chat/completions", {"messages": []}, 3),
    ("mid-stream refusal", "/v1/chat/completions", {"messages": []}, 1 + 2 + 1),
    ("mid-stream error", "/v1/chat/completions", {"messages": []}, 1 + 1 + 1),
]


@pytest.mark.parametrize(("how", "path", "extra", "count"), STREAM_CASES,
                         ids=[f"{c[0]} {c[1]} {c[3]}" for c in STREAM_CASES])
async def test_messages_cannot_inject_sse_frames(how: str, path: str, extra: dict[str, Any], count: int) -> None:
    app = LLMHookMiddleware(Answers(), hooks=[RefuseWith(how)], expose_hook_errors=True)
    script = Script(body_messages(orjson.dumps({"model": "m", "stream": True, **extra})))
    await app(http_scope(path), script.receive, script.send)
    assert_legal(script.sent)
    assert script.status == 200
    events = parse_events(script.body)
    assert len(events) == count, [e.raw for e in events]
    payloads = [orjson.loads(e.data) for e in events if not e.is_done]
    assert not any("injected" in p for p in payloads)
    carried = [p for p in payloads if any(INJECT in text for text in strings(p))]
    assert carried, "the message did not arrive whole, inside one JSON string"
    assert sum(e.is_done for e in events) == (0 if path == "/v1/responses" else 1)
    if path != "/v1/responses":
        assert events[-1].is_done
    assert {e.event for e in events} <= {None} | {p.get("type") for p in payloads}


@pytest.mark.parametrize("how", ["pre-call str", "pre-call raise", "pre-call http", "pre-call bug", "moderation"])
async def test_messages_stay_inside_one_json_string_when_not_streamed(how: str) -> None:
    app = LLMHookMiddleware(Answers(), hooks=[RefuseWith(how)], expose_hook_errors=True)
    script = Script(body_messages(orjson.dumps({"model": "m", "messages": []})))
    await app(http_scope(), script.receive, script.send)
    assert_legal(script.sent)
    parsed = orjson.loads(script.body)  # one JSON document, nothing before or after it
    texts = [parsed["choices"][0]["message"]["content"]] if "choices" in parsed else [parsed["error"]["message"]]
    assert any(INJECT in text for text in texts), parsed
    assert b"\n" not in script.body and b"\r" not in script.body
    headers = dict(script.sent[0]["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert all(INJECT.encode()[:5] not in value for value in headers.values())


# -- header injection through an exception's headers --------------------------------------------------------------

BAD_HEADERS: list[tuple[str, dict[str, Any]]] = [
    ("CRLF in a value", {"Retry-After": "1\r\nX-Injected: yes"}),
    ("LF in a value", {"Retry-After": "1\nX-Injected: yes"}),
    ("CR in a value", {"Retry-After": "1\rX-Injected: yes"}),
    ("NUL in a value", {"Retry-After": "1\x00X-Injected: yes"}),
    ("CRLF in a name", {"X-Evil\r\nX-Injected": "yes"}),
    ("colon in a name", {"X-Injected: yes\r\nX-Evil": "1"}),
    ("space in a name", {"X Injected": "yes"}),
    ("empty name", {"": "yes"}),
    ("not latin-1", {"Retry-After": "1 \u20ac"}),
    ("vertical tab", {"Retry-After": "1\x0bX-Injected: yes"}),
    ("escape", {"Retry-After": "1\x1b[31m"}),
    ("DEL", {"Retry-After": "1\x7f"}),
    ("a thousand-byte value", {"Retry-After": "1" + " " * 1000 + "\r\nX-Injected: yes"}),
]


class RaiseWithHeaders:
    def __init__(self, headers: dict[str, Any], where: str = "pre-call") -> None:
        self.headers = {**headers, "X-Good": "kept"}
        self.where = where

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        if self.where == "pre-call":
            raise HTTPException(429, detail="slow down", headers=self.headers)

    async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                           user_api_key_dict: Any) -> None:
        if self.where == "failure":
            raise HTTPException(429, detail="slow down", headers=self.headers)


@pytest.mark.parametrize("where", ["pre-call", "failure"])
@pytest.mark.parametrize(("case", "headers"), BAD_HEADERS, ids=[c for c, _ in BAD_HEADERS])
async def test_exception_headers_cannot_inject(case: str, headers: dict[str, Any], where: str) -> None:
    down = Answers(500, b'{"error": {"message": "upstream"}}')
    app = LLMHookMiddleware(down, hooks=[RaiseWithHeaders(headers, where)])
    script = Script(body_messages(orjson.dumps({"model": "m", "messages": []})))
    await app(http_scope(), script.receive, script.send)
    assert_legal(script.sent)  # no CR, LF or NUL in any name or value
    assert script.status == 429
    assert assert_openai_error(script.body, 429)["message"] == "slow down"
    names = [name for name, _ in script.sent[0]["headers"]]
    assert b"x-injected" not in names
    for name, value in script.sent[0]["headers"]:
        assert b"x-injected" not in name.lower() + b":" + value.lower(), (name, value)
        # what an HTTP/1.1 server can write: a token name and a value of visible latin-1 characters, spaces, tabs
        assert name and all(33 <= c <= 126 and c not in b'"(),/:;<=>?@[\\]{}' for c in name), name
        assert all(c == 9 or 32 <= c <= 126 or c >= 128 for c in value), (name, value)
    assert (b"x-good", b"kept") in script.sent[0]["headers"]


@pytest.mark.parametrize("server", SERVERS)
async def test_exception_headers_cannot_inject_through_a_real_server(server: str) -> None:
    headers = {"Retry-After": "1\r\nX-Injected: yes", "X-Evil\r\nX-Injected": "yes", "X Injected": "yes",
               "X-Ctl": "1\x0bX-Injected: yes", "X-Del": "1\x7f", "X-Euro": "\u20ac", "X-Good": "kept"}
    app = LLMHookMiddleware(Answers(), hooks=[RaiseWithHeaders(headers)])
    async with SERVERS[server](app) as base_url:
        host, port = base_url.rsplit("/", 1)[1].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = orjson.dumps({"model": "m", "messages": []})
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 429"), raw
    assert not [line for line in lines[1:] if line.lower().startswith(b"x-injected")], raw
    assert b"x-good: kept" in [line.lower() for line in lines[1:]], raw
    assert orjson.loads(payload)["error"]["message"] == "slow down"
