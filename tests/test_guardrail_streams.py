"""A post_call guardrail on streams (docs/reference.md#guardrails): hold-back windows, masks split across chunks, blocks
mid-stream, call frequency, in each stream format (chat, text completions, Responses, Anthropic)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from asgi_llm_guard import CustomGuardrail, LLMHookMiddleware, RejectRequest
from asgi_llm_guard.holdback import HeldText
from tests.apps import chat, chat_chunk, client, read_request, sse, text_chunk

pytestmark = pytest.mark.anyio

HEADER = "x-llm-guard-applied-guardrails"


class Masker(CustomGuardrail):
    """Masks s3cr3t, blocks rm -rf, counts its calls and the characters it was shown."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("guardrail_name", "masker")
        kwargs.setdefault("event_hook", "post_call")
        kwargs.setdefault("default_on", True)
        super().__init__(**kwargs)
        self.calls = 0
        self.chars = 0

    async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
        self.calls += 1
        self.chars += sum(len(t) for t in inputs["texts"])
        if any("rm -rf" in t for t in inputs["texts"]):
            raise RejectRequest("Blocked.")
        return {**inputs, "texts": [t.replace("s3cr3t", "[REDACTED]") for t in inputs["texts"]]}


class Streamer:
    """Answers every request with the given SSE events (named events when ``named``)."""

    def __init__(self, events: list[bytes]) -> None:
        self.events = events

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if await read_request(scope, receive, send) is None:
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for event in self.events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _data(body: bytes) -> list[Any]:
    """The JSON data of each event (``"[DONE]"`` as is)."""
    out: list[Any] = []
    for block in body.decode().split("\n\n"):
        lines = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if lines:
            out.append("[DONE]" if lines[0] == "[DONE]" else orjson.loads("\n".join(lines)))
    return out


def _chat_text(events: list[Any]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in events if isinstance(c, dict) and c.get("choices")
    )


def _assert_no_piece_of(body: bytes, secret: str) -> None:
    """Byte by byte: no 3-character piece of the secret reached the client."""
    for start in range(len(secret) - 2):
        assert secret[start : start + 3].encode() not in body, secret[start : start + 3]


# -- the window, as text --------------------------------------------------------------------------------------


def _through(pieces: list[str], holdback: int, every: int, fn: Any) -> tuple[str, int]:
    held = HeldText(holdback, every)
    out, calls = [], 0
    for piece in pieces:
        if held.add(piece):
            calls += 1
            out.append(held.release(fn(held.window), final=False))
    calls += 1
    out.append(held.release(fn(held.window), final=True))
    return "".join(out), calls


def test_a_pattern_split_across_pieces_and_windows_is_masked_whole() -> None:
    text = ("lorem ipsum dolor " * 7 + "s3cr3t ") * 5
    for size in (1, 2, 3, 5, 7, 64):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        out, _ = _through(pieces, holdback=8, every=16, fn=lambda t: t.replace("s3cr3t", "[X]"))
        assert out == text.replace("s3cr3t", "[X]"), size


def test_unchanged_text_comes_out_as_it_went_in_and_calls_are_linear() -> None:
    text = "word " * 2000
    pieces = [text[i : i + 5] for i in range(0, len(text), 5)]
    out, calls = _through(pieces, holdback=64, every=128, fn=lambda t: t)
    assert out == text
    assert calls <= len(text) // 128 + 2


def test_a_result_can_set_the_holdback() -> None:
    held = HeldText(4, 4)
    held.set_holdback([10])
    assert held.holdback == 10
    held.set_holdback("x")
    assert held.holdback == 10


# -- chat ------------------------------------------------------------------------------------------------------


def _chat_stream(pieces: list[str]) -> list[bytes]:
    first = chat_chunk("m", "")
    first["choices"][0]["delta"]["role"] = "assistant"
    return sse([first, *(chat_chunk("m", p) for p in pieces), chat_chunk("m", None, "stop")])


async def test_chat_stream_is_masked_even_when_the_secret_is_split_across_chunks() -> None:
    pieces = ["Here ", "is my s", "3c", "r3", "t and ", "more s3", "cr3t", " text."]
    app = LLMHookMiddleware(Streamer(_chat_stream(pieces)), hooks=[Masker(stream_holdback_chars=8,
                                                                          stream_check_chars=4)])
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("hi", stream=True))
    assert r.headers[HEADER] == "masker"
    events = _data(r.content)
    assert _chat_text(events) == "Here is my [REDACTED] and more [REDACTED] text."
    _assert_no_piece_of(r.content, "s3cr3t")
    assert events[-1] == "[DONE]"
    assert sum(1 for e in events if isinstance(e, dict) and e["choices"][0]["finish_reason"]) == 1
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


async def test_a_2000_chunk_stream_costs_a_call_per_window_not_per_chunk() -> None:
    pieces = ["tok" + str(i % 10) + " " for i in range(2000)]
    guard = Masker()
    app = LLMHookMiddleware(Streamer(_chat_stream(pieces)), hooks=[guard])
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("hi", stream=True))
    total = sum(len(p) for p in pieces)
    assert _chat_text(_data(r.content)) == "".join(pieces)
    assert guard.calls <= total // 128 + 2  # the default: a call per 128 new characters
    assert guard.chars <= total * 2  # each call sees its window only, never the whole text


async def test_a_block_mid_stream_ends_it_with_the_refusal_after_what_went_out() -> None:
    pieces = [f"line {i} is fine. " for i in range(40)] + ["now rm -rf / please", " and more"]
    app = LLMHookMiddleware(Streamer(_chat_stream(pieces)), hooks=[Masker()])
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("hi", stream=True))
    events = _data(r.content)
    text = _chat_text(events)
    assert text.startswith("line 0 is fine. ") and text.endswith("Blocked.")
    assert "rm -rf" not in r.content.decode()
    assert events[-1] == "[DONE]"
    assert [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]][-1] == "stop"


async def test_a_guard_hanging_mid_stream_ends_it_with_a_timeout_error_event() -> None:
    class HangsLater(Masker):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            if self.calls:
                await asyncio.sleep(30)
            return await super().apply_guardrail(inputs, request_data, input_type)

    pieces = [f"line {i} is fine. " for i in range(40)]
    app = LLMHookMiddleware(Streamer(_chat_stream(pieces)), hooks=[HangsLater(timeout=0.05)])
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("hi", stream=True))
    events = _data(r.content)
    assert events[-2]["error"]["type"] == "timeout_error" and events[-1] == "[DONE]"


async def test_logging_only_on_a_stream_passes_it_unchanged_and_checks_it_once() -> None:
    pieces = ["a s3cr3t ", "and rm -rf"]
    guard = Masker(event_hook="logging_only", guardrail_name="monitor")
    app = LLMHookMiddleware(Streamer(_chat_stream(pieces)), hooks=[guard])
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("hi", stream=True))
    assert _chat_text(_data(r.content)) == "a s3cr3t and rm -rf"
    assert guard.calls == 2  # the request once, the whole streamed answer once


# -- text completions ------------------------------------------------------------------------------------------


async def test_text_completion_stream_is_masked() -> None:
    events = sse([*(text_chunk("m", p) for p in ["the s3", "cr3", "t!"]), text_chunk("m", "", "stop")])
    app = LLMHookMiddleware(Streamer(events), hooks=[Masker(stream_holdback_chars=8, stream_check_chars=2)])
    async with client(app) as c:
        r = await c.post("/v1/completions", json={"model": "m", "prompt": "x", "stream": True})
    data = _data(r.content)
    assert "".join(e["choices"][0]["text"] for e in data[:-1]) == "the [REDACTED]!"
    _assert_no_piece_of(r.content, "s3cr3t")


# -- Responses API ---------------------------------------------------------------------------------------------


def _named(kind: str, **fields: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


def _responses_stream(pieces: list[str]) -> list[bytes]:
    full = "".join(pieces)
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    done_part = {**part, "text": full}
    done_item = {**item, "status": "completed", "content": [done_part]}
    response = {"id": "resp_1", "object": "response", "status": "in_progress", "model": "m", "output": []}
    events = [("response.created", {"response": response}),
              ("response.output_item.added", {"output_index": 0, "item": item}),
              ("response.content_part.added", {"item_id": "msg_1", "output_index": 0, "content_index": 0,
                                               "part": part})]
    events += [("response.output_text.delta", {"item_id": "msg_1", "output_index": 0, "content_index": 0,
                                               "delta": p, "logprobs": []}) for p in pieces]
    events += [("response.output_text.done", {"item_id": "msg_1", "output_index": 0, "content_index": 0,
                                              "text": full, "logprobs": []}),
               ("response.content_part.done", {"item_id": "msg_1", "output_index": 0, "content_index": 0,
                                               "part": done_part}),
               ("response.output_item.done", {"output_index": 0, "item": done_item}),
               ("response.completed", {"response": {**response, "status": "completed", "output": [done_item]}})]
    return [_named(kind, sequence_number=n, **fields) for n, (kind, fields) in enumerate(events)]


async def test_responses_stream_is_masked_in_deltas_and_in_every_done_event() -> None:
    pieces = ["Your key: s3", "cr", "3t", ". Also ", "s3cr3t", " again."]
    app = LLMHookMiddleware(Streamer(_responses_stream(pieces)),
                            hooks=[Masker(stream_holdback_chars=8, stream_check_chars=4)])
    async with client(app) as c:
        r = await c.post("/v1/responses", json={"model": "m", "input": "hi", "stream": True})
    _assert_no_piece_of(r.content, "s3cr3t")
    events = _data(r.content)
    expected = "Your key: [REDACTED]. Also [REDACTED] again."
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == expected
    by_type = {e["type"]: e for e in events}
    assert by_type["response.output_text.done"]["text"] == expected
    assert by_type["response.content_part.done"]["part"]["text"] == expected
    assert by_type["response.output_item.done"]["item"]["content"][0]["text"] == expected
    assert by_type["response.completed"]["response"]["output"][0]["content"][0]["text"] == expected
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


async def test_responses_stream_blocked_mid_way_closes_with_the_refusal() -> None:
    pieces = [f"part {i} is fine. " for i in range(30)] + ["rm -rf now"]
    app = LLMHookMiddleware(Streamer(_responses_stream(pieces)), hooks=[Masker()])
    async with client(app) as c:
        r = await c.post("/v1/responses", json={"model": "m", "input": "hi", "stream": True})
    events = _data(r.content)
    assert events[-1]["type"] == "response.completed"
    assert "rm -rf" not in r.content.decode()
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text.startswith("part 0 is fine.") and text.endswith("Blocked.")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


# -- Anthropic Messages ----------------------------------------------------------------------------------------


def _anthropic_stream(pieces: list[str]) -> list[bytes]:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 0}}
    events = [("message_start", {"message": message}),
              ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]
    events += [("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}) for p in pieces]
    events += [("content_block_stop", {"index": 0}),
               ("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                  "usage": {"output_tokens": 5}}),
               ("message_stop", {})]
    return [_named(kind, **fields) for kind, fields in events]


async def test_anthropic_stream_is_masked() -> None:
    pieces = ["the s3", "cr3t ", "is safe"]
    app = LLMHookMiddleware(Streamer(_anthropic_stream(pieces)), routes={"/v1/messages": "anthropic_messages"},
                            hooks=[Masker(stream_holdback_chars=8, stream_check_chars=2)])
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with client(app) as c:
        r = await c.post("/v1/messages", json=body)
    _assert_no_piece_of(r.content, "s3cr3t")
    events = _data(r.content)
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "the [REDACTED] is safe"
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]


async def test_prompt_pattern_guard_masks_and_blocks_streamed_answers_as_a_post_call_guardrail() -> None:
    from asgi_llm_guard.contrib import PromptPatternGuard

    masker = PromptPatternGuard(deny=[r"\bs3cr3t\b"], action="mask", event_hook=["pre_call", "post_call"],
                                stream_holdback_chars=16, stream_check_chars=8)
    app = LLMHookMiddleware(Streamer(_chat_stream(["my s3", "cr3t ", "is out ", "again s3cr3t."])), hooks=[masker])
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("hi", stream=True))
    assert _chat_text(_data(r.content)) == "my [REDACTED] is out again [REDACTED]."
    _assert_no_piece_of(r.content, "s3cr3t")
    assert r.headers[HEADER] == "PromptPatternGuard"

    blocker = PromptPatternGuard(deny=[r"forbidden"], event_hook="post_call", message="No.")
    app = LLMHookMiddleware(Streamer(_chat_stream(["this is forb", "idden"])), hooks=[blocker])
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("hi", stream=True))
    assert _chat_text(_data(r.content)) == "No."
    assert b"forb" not in r.content


async def test_a_wrong_shape_mid_stream_ends_it_with_an_error_event_and_leaks_nothing_held() -> None:
    class WrongLater(Masker):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            if self.calls:
                return {"texts": ["a", "b"]}  # two texts for one
            return await super().apply_guardrail(inputs, request_data, input_type)

    pieces = [f"line {i} is fine. " for i in range(30)] + ["s3cr3t at the end"]
    app = LLMHookMiddleware(Streamer(_chat_stream(pieces)), hooks=[WrongLater()])
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("hi", stream=True))
    events = _data(r.content)
    assert events[-2]["error"]["message"] == "streaming hook WrongLater failed"
    assert events[-1] == "[DONE]"
    _assert_no_piece_of(r.content, "s3cr3t")


async def test_anthropic_text_in_a_content_block_start_is_held_and_masked_too() -> None:
    events = _anthropic_stream(["cr3t and more"])
    events[1] = _named("content_block_start", index=0, content_block={"type": "text", "text": "a s3"})
    app = LLMHookMiddleware(Streamer(events), routes={"/v1/messages": "anthropic_messages"},
                            hooks=[Masker(stream_holdback_chars=8, stream_check_chars=2)])
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with client(app) as c:
        r = await c.post("/v1/messages", json=body)
    _assert_no_piece_of(r.content, "s3cr3t")
    data = _data(r.content)
    start = next(e for e in data if e["type"] == "content_block_start")
    deltas = "".join(e["delta"]["text"] for e in data if e["type"] == "content_block_delta")
    assert start["content_block"]["text"] + deltas == "a [REDACTED] and more"


async def test_responses_text_sent_only_whole_in_done_events_is_checked_there() -> None:
    events = [e for e in _responses_stream(["the s3cr3t is here"]) if b"output_text.delta" not in e]
    guard = Masker()
    app = LLMHookMiddleware(Streamer(events), hooks=[guard])
    async with client(app) as c:
        r = await c.post("/v1/responses", json={"model": "m", "input": "hi", "stream": True})
    assert b"s3cr3t" not in r.content
    by_type = {e["type"]: e for e in _data(r.content)}
    assert by_type["response.output_text.done"]["text"] == "the [REDACTED] is here"
    assert by_type["response.completed"]["response"]["output"][0]["content"][0]["text"] == "the [REDACTED] is here"
    assert guard.calls == 1


async def test_anthropic_untyped_text_deltas_and_blocks_are_masked() -> None:
    # Regression: a delta or block with a `text` and no `type` was skipped by the guardrail, yet the anthropic SDK
    # reads it as a TextDelta / TextBlock and hands its caller the unmasked text.
    events = _anthropic_stream([])
    events[1] = _named("content_block_start", index=0, content_block={"text": "a s3"})
    events.insert(2, _named("content_block_delta", index=0, delta={"text": "cr3t and s3cr3t"}))
    app = LLMHookMiddleware(Streamer(events), routes={"/v1/messages": "anthropic_messages"},
                            hooks=[Masker(stream_holdback_chars=8, stream_check_chars=2)])
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with client(app) as c:
        r = await c.post("/v1/messages", json=body)
    _assert_no_piece_of(r.content, "s3cr3t")
    data = _data(r.content)
    start = next(e for e in data if e["type"] == "content_block_start")
    deltas = "".join(e["delta"]["text"] for e in data if e["type"] == "content_block_delta")
    assert start["content_block"]["text"] + deltas == "a [REDACTED] and [REDACTED]"


@pytest.mark.parametrize("content", ["the s3cr3t", [{"text": "the s3cr3t"}]], ids=["string", "untyped-block"])
async def test_anthropic_answer_content_as_a_string_or_untyped_block_is_masked(content: Any) -> None:
    # Regression: the anthropic SDK hands a string `content` to its caller as it is and reads an untyped block as
    # a TextBlock; the guardrail saw neither and the text went out unmasked.
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": content,
              "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if await read_request(scope, receive, send) is None:
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": orjson.dumps(answer)})

    guarded = LLMHookMiddleware(app, hooks=[Masker()])
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    async with client(guarded) as c:
        r = await c.post("/v1/messages", json=body)
    assert r.status_code == 200 and "s3cr3t" not in r.text
    got = r.json()["content"]
    assert (got if isinstance(got, str) else got[0]["text"]) == "the [REDACTED]"


async def test_anthropic_text_put_in_message_start_content_is_checked_there() -> None:
    # Regression: a downstream that puts the answer's text in message_start's content (Anthropic's own sends it
    # empty) got it past a post_call guardrail; the SDK's messages.stream() keeps it in the final message.
    events = _anthropic_stream(["and s3cr3t"])
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
               "content": [{"type": "text", "text": "a s3cr3t"}], "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": 1, "output_tokens": 0}}
    events[0] = _named("message_start", message=message)
    app = LLMHookMiddleware(Streamer(events), routes={"/v1/messages": "anthropic_messages"}, hooks=[Masker()])
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with client(app) as c:
        r = await c.post("/v1/messages", json=body)
    _assert_no_piece_of(r.content, "s3cr3t")
    data = _data(r.content)
    assert data[0]["message"]["content"] == [{"type": "text", "text": "a [REDACTED]"}]
    assert "".join(e["delta"]["text"] for e in data if e["type"] == "content_block_delta") == "and [REDACTED]"
