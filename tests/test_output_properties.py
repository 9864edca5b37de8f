"""Property tests for "no output fail-open": whatever JSON the app answers (NaN and infinities included), however it
is labelled, prefixed (BOM, whitespace) and split into messages, the success hook sees it and the client gets what
the hook left; whatever chat stream the app sends, under any label and split, the per-chunk hook sees every chunk.

Derandomised in CI like every property test here (tests/conftest.py); ``HYPOTHESIS_PROFILE=random`` explores.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_llm_guard import LLMHookMiddleware
from asgi_llm_guard.sse import SSEParser

from .apps import Script, body_messages, chat, chat_chunk, http_scope, receive_body
from .asgi_checks import assert_legal

SETTINGS = settings(max_examples=150, deadline=None, database=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=16,
)
json_objects = st.dictionaries(st.text(max_size=6), json_values, max_size=5)
LABELS = [[(b"content-type", b"application/json")], [(b"content-type", b"text/plain; charset=utf-8")], [],
          [(b"content-type", b"application/octet-stream")], [(b"content-type", b"text/event-stream")]]
labels = st.sampled_from(LABELS)
prefixes = st.sampled_from([b"", b"\xef\xbb\xbf", b"\n ", b"\xef\xbb\xbf\r\n\t"])
# A line that starts with a space is no field for an SSE client: before a stream, only blank lines and a BOM.
stream_prefixes = st.sampled_from([b"", b"\xef\xbb\xbf", b"\n", b"\r\n", b"\xef\xbb\xbf\n"])


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points (drawn here, before the test runs: a draw inside an async test leaves
    hypothesis' StopTest in a task nobody awaits)."""
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=6)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@st.composite
def json_answers(draw: st.DrawFn) -> tuple[dict[str, Any], list[bytes]]:
    answer = draw(json_objects)
    return answer, draw(split(draw(prefixes) + json.dumps(answer).encode()))


@st.composite
def chat_streams(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[bytes]]:
    chunks = [chat_chunk("m", word) for word in draw(st.lists(st.text(max_size=10), min_size=1, max_size=6))]
    raw = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"
    return chunks, draw(split(draw(stream_prefixes) + raw))


def canonical(value: Any) -> str:
    """JSON values compared with NaN equal to itself (Python's json writes it as NaN)."""
    return json.dumps(value, sort_keys=True)


def answering(pieces: list[bytes], headers: list[tuple[bytes, bytes]]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index, piece in enumerate(pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": index < len(pieces) - 1})

    return app


async def run(app: Any, request: dict[str, Any]) -> Script:
    script = Script(body_messages(orjson.dumps(request)))
    await app(http_scope(), script.receive, script.send)
    assert_legal(script.sent)
    return script


class Marks:
    """A success hook and a per-chunk hook that record what they saw and mark it."""

    def __init__(self) -> None:
        self.answers: list[Any] = []
        self.chunks: list[dict[str, Any]] = []

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        self.answers.append(canonical(response))
        return {**response, "__checked__": True}

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.chunks.append(response)
        return {**response, "__checked__": True}


@pytest.mark.anyio
@SETTINGS
@given(json_answers(), labels)
async def test_any_json_answer_goes_through_the_success_hook(
    case: tuple[dict[str, Any], list[bytes]], label: list[tuple[bytes, bytes]]
) -> None:
    answer, pieces = case
    hook = Marks()
    script = await run(LLMHookMiddleware(answering(pieces, label), hooks=[hook]), chat())
    assert script.status == 200
    assert hook.answers == [canonical(answer)]
    assert canonical(json.loads(script.body)) == canonical({**answer, "__checked__": True})


@pytest.mark.anyio
@SETTINGS
@given(chat_streams(), labels, st.booleans())
async def test_any_chat_stream_goes_through_the_per_chunk_hook(
    case: tuple[list[dict[str, Any]], list[bytes]], label: list[tuple[bytes, bytes]], requested: bool
) -> None:
    chunks, pieces = case
    hook = Marks()
    script = await run(LLMHookMiddleware(answering(pieces, label), hooks=[hook]), chat(stream=requested))
    assert script.status == 200
    assert hook.chunks == chunks
    events = SSEParser().feed(script.body)
    assert [json.loads(e.data) for e in events if e.data is not None and not e.is_done] == [
        {**chunk, "__checked__": True} for chunk in chunks
    ]
    assert events[-1].is_done
