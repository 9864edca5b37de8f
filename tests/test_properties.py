"""Property-based tests (hypothesis) of the request body path and the SSE path, driven with scripted ASGI.

Whatever the body bytes, however the server chunks them, and whatever bytes a downstream app streams back, split
at any boundary: no exception escapes the middleware, the client gets a legal ASGI message sequence, a request
is forwarded exactly when its body is a JSON object (within the limit), and then the app sees the hooked body.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asgi_llm_guard import LLMHookMiddleware
from asgi_llm_guard.sse import SSEParser

from .apps import Script, body_messages, chat, chat_chunk, http_scope
from .asgi_checks import assert_legal, assert_openai_error, response_body

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LIMIT = 2048


def test_property_tests_draw_the_same_examples_on_every_run() -> None:
    # Regression: the property tests ran on random seeds, and one CI-style run in ten failed on an input no one
    # could replay. The default profile (tests/conftest.py) is derandomised; HYPOTHESIS_PROFILE=random is not.
    asked_random = os.environ.get("HYPOTHESIS_PROFILE", "ci") != "ci"
    assert SETTINGS.derandomize is settings.default.derandomize is (not asked_random)
    assert SETTINGS.database is None
    runs: list[list[bytes]] = []

    @settings(max_examples=25)
    @given(st.binary(min_size=8))
    def draw(value: bytes) -> None:
        runs[-1].append(value)

    for _ in range(2):
        runs.append([])
        draw()
    assert (runs[0] == runs[1]) is (not asked_random)


# -- strategies -------------------------------------------------------------------------------------------------

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=25,
)
json_objects = st.dictionaries(text, json_values, max_size=6)


def nested(depth: int) -> bytes:
    return b'{"model": "m", "x": ' + b"[" * depth + b"]" * depth + b"}"


JSON_TOKENS = [b"{", b"}", b"[", b"]", b'"', b":", b",", b" ", b"\n", b"1", b"-", b"e", b"true", b"null",
               b"NaN", b"Infinity", b'"model"', b'"messages"', b"\\u", b"\\ud800", b"\xff", b"\xc3\xa9", b"\x00",
               b"\xef\xbb\xbf", b"18446744073709551616", b"1e400"]
json_ish = st.lists(st.sampled_from(JSON_TOKENS), max_size=40).map(b"".join)
bodies = st.one_of(
    st.binary(max_size=300),
    json_ish,
    json_objects.map(orjson.dumps),
    st.integers(min_value=0, max_value=1100).map(nested),
    st.binary(min_size=LIMIT - 20, max_size=LIMIT + 20),
)


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points (empty pieces included)."""
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@st.composite
def chunked_bodies(draw: st.DrawFn, strategy: st.SearchStrategy[bytes]) -> tuple[bytes, list[bytes]]:
    body = draw(strategy)
    return body, draw(split(body))


def request_messages(pieces: list[bytes]) -> list[dict[str, Any]]:
    return [
        {"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1}
        for index, piece in enumerate(pieces)
    ]


# -- the app and hooks ------------------------------------------------------------------------------------------


class Recording:
    """A downstream app recording the body it received; answers a chat completion, or ``events`` as SSE."""

    def __init__(self, events: list[bytes] | None = None, last_more_body: bool = False) -> None:
        self.bodies: list[bytes] = []
        self.events = events
        self.last_more_body = last_more_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        if self.events is None:
            answer = orjson.dumps({"id": "x", "object": "chat.completion", "choices": []})
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": answer})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for index, piece in enumerate(self.events):
            last = index == len(self.events) - 1
            await send({"type": "http.response.body", "body": piece, "more_body": not last or self.last_more_body})
        if self.last_more_body or not self.events:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class Hooks:
    """Pre-call: records ``data`` and returns a marked copy; success: marks the response."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        self.seen.append(data)
        return {**data, "__hooked__": True}

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        return {**response, "__answered__": True}


async def run(app: Any, scope: dict[str, Any], messages: list[dict[str, Any]]) -> Script:
    script = Script(list(messages))
    await asyncio.wait_for(app(scope, script.receive, script.send), 10)
    return script


def as_json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


# -- request bodies ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
@SETTINGS
@given(chunked_bodies(bodies), st.booleans())
@example(chunks=(nested(300), [nested(300)[:7], nested(300)[7:]]), declare_length=True)
async def test_arbitrary_bodies_in_arbitrary_chunks(chunks: tuple[bytes, list[bytes]], declare_length: bool) -> None:
    body, pieces = chunks
    hooks, down = Hooks(), Recording()
    app = LLMHookMiddleware(down, hooks=[hooks], max_body_bytes=LIMIT)
    headers = [(b"content-type", b"application/json")]
    if declare_length:
        headers.append((b"content-length", str(len(body)).encode()))
    script = await run(app, http_scope(headers=headers), request_messages(pieces))
    assert_legal(script.sent)
    parsed = as_json_object(body) if len(body) <= LIMIT else None
    if len(body) > LIMIT:
        assert script.status == 413
        assert_openai_error(script.body, 413)
        assert down.bodies == [] and hooks.seen == []
    elif parsed is None:
        assert script.status == 400
        assert_openai_error(script.body, 400)
        assert down.bodies == [] and hooks.seen == []
    else:
        # A JSON object: either forwarded with the hooked body, or (too deep to re-serialise) a clear 400.
        if script.status == 400:
            assert_openai_error(script.body, 400)
            assert down.bodies == []
            return
        assert script.status == 200, script.body
        assert hooks.seen == [parsed]
        assert len(down.bodies) == 1 and orjson.loads(down.bodies[0]) == {**parsed, "__hooked__": True}
        assert orjson.loads(script.body)["__answered__"] is True


@pytest.mark.anyio
@SETTINGS
@given(json_objects.flatmap(lambda obj: st.tuples(st.just(obj), split(orjson.dumps(obj)))))
async def test_json_objects_reach_the_hooks_intact_and_the_app_hooked(case: tuple[dict[str, Any], list[bytes]]) -> None:
    obj, pieces = case
    hooks, down = Hooks(), Recording()
    app = LLMHookMiddleware(down, hooks=[hooks], max_body_bytes=1024 * 1024)
    script = await run(app, http_scope(), request_messages(pieces))
    assert_legal(script.sent)
    assert script.status == 200
    assert hooks.seen == [obj]
    assert [orjson.loads(body) for body in down.bodies] == [{**obj, "__hooked__": True}]


# -- the SSE path -----------------------------------------------------------------------------------------------

SSE_TOKENS = [
    b"data: ", b"data:", b"data: [DONE]", b"event: response.created", b"event: ping", b"id: 7", b"retry: 10",
    b": keep-alive", b"\n", b"\n\n", b"\r", b"\r\n", b"\r\n\r\n", b"\xef\xbb\xbf", b"{", b"}", b'"a"', b":",
    b"not json", b"\xff", b"\x00",
    orjson.dumps(chat_chunk("m", "hi")), orjson.dumps({"type": "response.output_text.delta", "delta": "x"}),
    b"[1, 2]", b'"str"',
]
whole_events = st.sampled_from([
    b"data: " + orjson.dumps(chat_chunk("m", "hello")) + b"\n\n",
    b"data: " + orjson.dumps(chat_chunk("m", None, "stop")) + b"\r\n\r\n",
    b"event: response.output_text.delta\nid: 3\ndata: " + orjson.dumps({"type": "response.output_text.delta"})
    + b"\n\n",
    b"data: {\"a\":\ndata: 1}\n\n",
    b"data: [DONE]\n\n",
    b": comment\n\n",
    b"data: not json\r\r",
])
CHUNK_EVENT = b"data: " + orjson.dumps(chat_chunk("m", "hi")) + b"\n\n"
CRLF_CHUNK_EVENT = b"data: " + orjson.dumps(chat_chunk("m", "hi")) + b"\r\n\r\n"
sse_streams = st.lists(st.one_of(st.sampled_from(SSE_TOKENS), whole_events, st.binary(max_size=12)),
                       max_size=30).map(b"".join)


class PerChunk:
    def __init__(self) -> None:
        self.calls = 0

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.calls += 1
        return {**response, "__chunk__": True}


class PassIterator:
    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict
    ) -> Any:
        async for chunk in response:
            yield chunk


class PreCall:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        return {**data, "__hooked__": True}


def json_object_data(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    return as_json_object(data)


def described(events: list[Any], hooked: bool, with_names: bool = True) -> list[tuple[Any, ...]]:
    """Events as comparable tuples: JSON-object events by value (marked as a hook would mark them), others by
    their data."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        obj = None if event.is_done else json_object_data(event.data)
        name = event.event if with_names else None
        if event.is_done:
            out.append(("done", name, event.data))
        elif obj is not None:
            out.append(("json", name, {**obj, "__chunk__": True} if hooked else obj))
        else:
            out.append(("raw", name, event.data))
    return out


@pytest.mark.anyio
@SETTINGS
@given(sse_streams.flatmap(lambda raw: st.tuples(st.just(raw), split(raw))), st.booleans(),
       st.sampled_from(["none", "per-chunk", "iterator"]))
@example(stream=(b"data: [DONE]\n\n: ping", [b"data: [DONE]\n\n", b": ping"]), last_more_body=True,
         hooks_kind="iterator")
# A BOM before a first [DONE] followed by more events: the iterator path moved [DONE] to the end with its BOM,
# where a client no longer strips it (a BOM counts only at the very start of a stream) and missed the [DONE].
@example(stream=(b"\xef\xbb\xbfdata: [DONE]\n\n" + CHUNK_EVENT, [b"\xef\xbb\xbfdata: [DONE]\n\n" + CHUNK_EVENT]),
         last_more_body=False, hooks_kind="iterator")
# A CRLF-terminated event whose LF came alone in the last message: the parser returned it from close() as an
# unterminated tail (b"\n"), and after the re-encoded event it went out as a stray blank line at the end.
@example(stream=(CRLF_CHUNK_EVENT, [CRLF_CHUNK_EVENT[:-1], CRLF_CHUNK_EVENT[-1:]]), last_more_body=False,
         hooks_kind="per-chunk")
# The same split before more events: the LF was taken for the start of the next event (an extra blank line).
@example(stream=(CRLF_CHUNK_EVENT + b": ping", [CRLF_CHUNK_EVENT[:-1], CRLF_CHUNK_EVENT[-1:] + b": ping"]),
         last_more_body=True, hooks_kind="per-chunk")
@example(stream=(CRLF_CHUNK_EVENT + b": ping", [CRLF_CHUNK_EVENT[:-1], CRLF_CHUNK_EVENT[-1:] + b": ping"]),
         last_more_body=False, hooks_kind="iterator")
async def test_arbitrary_sse_streams_in_arbitrary_chunks(
    stream: tuple[bytes, list[bytes]], last_more_body: bool, hooks_kind: str
) -> None:
    raw, pieces = stream
    down = Recording(events=pieces, last_more_body=last_more_body)
    per_chunk = PerChunk()
    hooks: list[Any] = [PreCall()]
    if hooks_kind == "per-chunk":
        hooks.append(per_chunk)
    elif hooks_kind == "iterator":
        hooks += [PassIterator(), per_chunk]
    app = LLMHookMiddleware(down, hooks=hooks)
    script = await run(app, http_scope(), body_messages(orjson.dumps(chat(stream=True))))
    assert_legal(script.sent)
    assert script.status == 200
    assert [orjson.loads(body) for body in down.bodies] == [{**chat(stream=True), "__hooked__": True}]
    out = response_body(script.sent)

    reference = SSEParser()
    expected_events = reference.feed(raw)
    tail = reference.close()
    if hooks_kind == "none":
        # Not parsed, not buffered: every message as the app sent it.
        assert out == raw
        assert [m.get("body", b"") for m in script.sent[1:] if m.get("body", b"")] == [p for p in pieces if p]
        return
    reparsed = SSEParser()
    got_events = reparsed.feed(out)
    if hooks_kind == "per-chunk":
        assert out.endswith(tail)
        assert described(got_events, hooked=False) == described(expected_events, hooked=True)
        assert reparsed.close() == tail
        return
    # Iterator hooks: JSON chunks in order and hooked, every other event still there in order; [DONE] last.
    got = described(got_events, hooked=False, with_names=False)
    want = described(expected_events, hooked=True, with_names=False)
    assert [e for e in got if e[0] == "json"] == [e for e in want if e[0] == "json"]
    def with_data(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [e for e in events if e[0] == "raw" and e[2] is not None]

    def comments(events: list[tuple[Any, ...]]) -> int:
        return len([e for e in events if e[0] == "raw" and e[2] is None])

    assert with_data(got) == with_data(want)
    # comment-only blocks all arrive (the stream's unterminated tail may be closed into one more)
    assert comments(got) >= comments(want)
    if any(e[0] == "done" for e in want):
        assert any(e[0] == "done" for e in got), "the stream's [DONE] was lost"
