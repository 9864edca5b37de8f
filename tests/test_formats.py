"""The wire-format interface the flow and the guardrails use: one format per call type, text slots that read and
write in place, and each format's refusal, error and stream close in its own shape."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from asgi_llm_guard._types import CALL_TYPES
from asgi_llm_guard.errors import GuardError
from asgi_llm_guard.formats import FORMATS, TextSlot, WireFormat
from asgi_llm_guard.routes import DEFAULT_ROUTES
from asgi_llm_guard.sse import SSEParser


def test_every_call_type_has_exactly_one_format_and_a_default_route() -> None:
    # Adding a format is a module, an entry in FORMATS and a route: a call type missing from one of them fails here.
    assert list(FORMATS) == list(CALL_TYPES)
    assert all(isinstance(wire, WireFormat) and wire.call_type == name for name, wire in FORMATS.items())
    assert set(DEFAULT_ROUTES.values()) == set(CALL_TYPES)


def test_refusal_is_an_answer_only_where_the_api_answers_text() -> None:
    answers = {name for name, wire in FORMATS.items() if wire.refusal_is_answer}
    assert answers == {"completion", "text_completion", "responses", "anthropic_messages"}


def test_text_slots_write_back_in_place() -> None:
    data: dict[str, Any] = {
        "system": [{"type": "text", "text": "sys"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a secret"}]}],
    }
    slots = FORMATS["anthropic_messages"].request_text_slots(data)
    assert [slot.get() for slot in slots] == ["sys", "a secret"]
    slots[1].set("a [masked]")
    assert data["messages"][0]["content"][0]["text"] == "a [masked]"
    assert isinstance(slots[0], TextSlot)


@pytest.mark.parametrize(
    ("call_type", "body", "texts"),
    [
        ("completion", {"choices": [{"message": {"role": "assistant", "content": "hi"}}]}, ["hi"]),
        ("text_completion", {"choices": [{"text": "hi"}, {"text": "there"}]}, ["hi", "there"]),
        (
            "responses",
            {"output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}]},
            ["hi"],
        ),
        ("anthropic_messages", {"content": [{"type": "text", "text": "hi"}, {"type": "tool_use"}]}, ["hi"]),
        ("embeddings", {"data": [{"embedding": [0.1]}]}, []),
    ],
)
def test_response_texts(call_type: str, body: Any, texts: list[str]) -> None:
    assert FORMATS[call_type].response_texts(body) == texts


@pytest.mark.parametrize(
    ("call_type", "event", "texts"),
    [
        ("completion", {"choices": [{"delta": {"content": "to"}}]}, ["to"]),
        ("text_completion", {"choices": [{"text": "to"}]}, ["to"]),
        ("responses", {"type": "response.output_text.delta", "delta": "to"}, ["to"]),
        (
            "anthropic_messages",
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "to"}},
            ["to"],
        ),
        ("anthropic_messages", {"type": "content_block_delta", "delta": {"type": "input_json_delta"}}, []),
    ],
)
def test_event_text_slots(call_type: str, event: dict[str, Any], texts: list[str]) -> None:
    assert [slot.get() for slot in FORMATS[call_type].event_text_slots(event)] == texts


def test_tool_calls_and_messages_of_a_request() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    chat = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "tool_calls": [call]}]}
    assert FORMATS["completion"].tool_calls(chat) == [call]
    assert FORMATS["completion"].structured_messages(chat) == chat["messages"]
    use = {"type": "tool_use", "id": "t", "name": "f", "input": {"q": 1}}
    anthropic = {"messages": [{"role": "assistant", "content": [{"type": "text", "text": "x"}, use]}]}
    assert FORMATS["anthropic_messages"].tool_calls(anthropic) == [use]


def test_guardrail_texts_leave_tool_call_arguments_to_tool_calls() -> None:
    # A guardrail gets tool-call arguments whole in inputs["tool_calls"], never among its texts (request_texts,
    # the texts a pre-call hook's mask sees, keep them).
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"k\": 1}"}}
    chat = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "tool_calls": [call]}]}
    assert [slot.get() for slot in FORMATS["completion"].guardrail_text_slots(chat)] == ["u"]
    assert FORMATS["completion"].request_texts(chat) == ["u", "{\"k\": 1}"]
    custom = {"type": "custom_tool_call", "call_id": "c", "name": "f", "input": "raw"}
    responses = {"instructions": "be brief", "input": [{"type": "function_call", "arguments": "{}"}, custom]}
    assert [slot.get() for slot in FORMATS["responses"].guardrail_text_slots(responses)] == ["be brief"]


@pytest.mark.parametrize(
    ("call_type", "body", "calls"),
    [
        ("completion", {"choices": [{"message": {"tool_calls": [{"id": "c"}]}}, {"message": {}}]}, [{"id": "c"}]),
        (
            "responses",
            {"output": [{"type": "message"}, {"type": "function_call", "id": "f"}]},
            [{"type": "function_call", "id": "f"}],
        ),
        (
            "anthropic_messages",
            {"content": [{"type": "text", "text": "x"}, {"type": "tool_use", "id": "t"}]},
            [{"type": "tool_use", "id": "t"}],
        ),
        ("text_completion", {"choices": [{"text": "x"}]}, []),
        ("embeddings", {"data": []}, []),
    ],
)
def test_response_tool_calls(call_type: str, body: dict[str, Any], calls: list[Any]) -> None:
    assert FORMATS[call_type].response_tool_calls(body) == calls


def test_a_transcription_answer_is_its_text_and_an_image_answer_has_none() -> None:
    assert FORMATS["audio_transcription"].response_texts({"text": "said"}) == ["said"]
    assert FORMATS["image_generation"].response_texts({"text": "said", "data": []}) == []


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (529, "overloaded_error"), (418, "invalid_request_error")],
)
def test_error_bodies_and_events_in_each_format(status: int, kind: str) -> None:
    error = GuardError(status, "no")
    assert orjson.loads(FORMATS["completion"].error_body(error))["error"]["code"] == str(status)
    assert orjson.loads(FORMATS["anthropic_messages"].error_body(error)) == {
        "type": "error",
        "error": {"type": kind, "message": "no"},
    }
    chat_events = SSEParser().feed(FORMATS["completion"].error_events(error))
    assert [e.is_done for e in chat_events] == [False, True]
    anthropic_events = SSEParser().feed(FORMATS["anthropic_messages"].error_events(error))
    assert [e.event for e in anthropic_events] == ["error"]


def test_anthropic_close_without_any_event_seen_starts_the_message_once() -> None:
    state = FORMATS["anthropic_messages"].stream_state("claude-x")
    events = SSEParser().feed(state.closing_refusal("no", None))
    assert [e.event for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert orjson.loads(events[0].data or b"")["message"]["model"] == "claude-x"
