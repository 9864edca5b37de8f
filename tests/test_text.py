from __future__ import annotations

import copy
from typing import Any

import pytest

from asgi_llm_guard._types import CALL_TYPES
from asgi_llm_guard.text import get_formatted_prompt, request_texts, rewrite_request_texts

CHAT: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "sys"},
        {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "u1"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "input_text", "text": "u2"},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"q": "a1"}'}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": '{"q": "a2"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "t1"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "t2"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "o1"}], "refusal": "r1"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "r2"}]},
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "fc"}},
        {"role": "function", "name": "f", "content": "fr"},
    ],
}
CHAT_TEXTS = [
    "sys",
    "dev",
    "u1",
    "u2",
    '{"q": "a1"}',
    '{"q": "a2"}',
    "t1",
    "t2",
    "o1",
    "r1",
    "r2",
    "fc",
    "fr",
]

RESPONSES: dict[str, Any] = {
    "model": "gpt-4o",
    "instructions": "ins",
    "input": [
        {"role": "user", "content": "m1"},
        {"role": "user", "content": [{"type": "input_text", "text": "m2"}, {"type": "input_image"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "m3"}]},
        {"type": "function_call", "call_id": "x", "name": "f", "arguments": '{"a": "fa"}'},
        {"type": "function_call_output", "call_id": "x", "output": "fo"},
        {"type": "reasoning", "summary": []},
    ],
}
RESPONSES_TEXTS = ["ins", "m1", "m2", "m3", '{"a": "fa"}', "fo"]


def test_chat_every_role_and_shape_in_order() -> None:
    assert request_texts(CHAT, "completion") == CHAT_TEXTS


def test_chat_empty_and_missing_content_is_skipped() -> None:
    data = {
        "messages": [{"role": "user", "content": ""}, {"role": "assistant"}, {"role": "user", "content": "x"}]
    }
    assert request_texts(data, "completion") == ["x"]


def test_text_completion_prompt_string() -> None:
    assert request_texts({"prompt": "say hi"}, "text_completion") == ["say hi"]


def test_text_completion_prompt_list_skips_token_ids() -> None:
    data = {"prompt": ["one", [1, 2, 3], "two", 7]}
    assert request_texts(data, "text_completion") == ["one", "two"]
    assert request_texts({"prompt": [[1, 2], [3]]}, "text_completion") == []


def test_embeddings_input_string_and_list() -> None:
    assert request_texts({"input": "embed me"}, "embeddings") == ["embed me"]
    assert request_texts({"input": ["a", "b"]}, "embeddings") == ["a", "b"]


def test_embeddings_token_ids_are_skipped() -> None:
    assert request_texts({"input": [1, 2, 3]}, "embeddings") == []
    assert request_texts({"input": [[1, 2], [3, 4]]}, "embeddings") == []


def test_moderation_input_string_list_and_parts() -> None:
    assert request_texts({"input": "m"}, "moderation") == ["m"]
    assert request_texts({"input": ["m1", "m2"]}, "moderation") == ["m1", "m2"]
    parts = {
        "input": [
            {"type": "text", "text": "p1"},
            {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
            {"type": "text", "text": "p2"},
        ]
    }
    assert request_texts(parts, "moderation") == ["p1", "p2"]


def test_image_generation_and_audio_prompt() -> None:
    assert request_texts({"prompt": "a cat", "n": 1}, "image_generation") == ["a cat"]
    data = {"prompt": "names: Ada", "model": "whisper-1", "file": {"filename": "a.wav", "size": 3}}
    assert request_texts(data, "audio_transcription") == ["names: Ada"]


def test_responses_string_input_and_instructions() -> None:
    assert request_texts({"instructions": "be nice", "input": "hi"}, "responses") == ["be nice", "hi"]


def test_responses_item_list() -> None:
    assert request_texts(RESPONSES, "responses") == RESPONSES_TEXTS


def test_responses_function_call_output_as_parts() -> None:
    data = {"input": [{"type": "function_call_output", "output": [{"type": "input_text", "text": "po"}]}]}
    assert request_texts(data, "responses") == ["po"]


def test_call_type_selects_the_fields() -> None:
    data = {"messages": [{"role": "user", "content": "msg"}], "prompt": "p", "input": "i"}
    assert request_texts(data, "completion") == ["msg"]
    assert request_texts(data, "text_completion") == ["p"]
    assert request_texts(data, "embeddings") == ["i"]


def test_unknown_call_type_reads_every_field() -> None:
    data = {
        "messages": [{"role": "user", "content": "msg"}],
        "instructions": "ins",
        "prompt": "p",
        "input": "i",
    }
    assert request_texts(data, "something_else") == ["msg", "ins", "p", "i"]


ODD_BODIES: list[Any] = [
    {},
    {"messages": None},
    {"messages": "hello"},
    {"messages": [None, 1, "x", [], {"content": 5}, {"content": [None, 3, {"type": "text", "text": 9}]}]},
    {"messages": [{"role": "assistant", "tool_calls": "x"}]},
    {
        "messages": [
            {"role": "assistant", "tool_calls": [None, {"function": None}, {"function": {"arguments": 1}}]}
        ]
    },
    {"messages": [{"role": "assistant", "function_call": "x", "refusal": 3}]},
    {"prompt": None, "input": None, "instructions": 5},
    {"prompt": {"a": 1}, "input": {"b": 2}},
    {"input": [None, {"type": "function_call_output", "output": 5}, {"type": "function_call"}, {}]},
    {"input": [{"role": "user", "content": {"text": "x"}}, {"type": "message", "content": 7}]},
    [],
    "not a dict",
    None,
]


@pytest.mark.parametrize("body", ODD_BODIES)
@pytest.mark.parametrize("call_type", [*CALL_TYPES, "unknown"])
def test_odd_shapes_do_not_raise(body: Any, call_type: str) -> None:
    texts = request_texts(body, call_type)
    assert all(isinstance(text, str) for text in texts)
    get_formatted_prompt(body, call_type)
    if isinstance(body, dict):
        before = copy.deepcopy(body)
        rewrite_request_texts(body, call_type, str.upper)
        assert request_texts(body, call_type) == [text.upper() for text in request_texts(before, call_type)]


def test_get_formatted_prompt_contains_the_message() -> None:
    data = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello world"}]}
    assert "Hello world" in get_formatted_prompt(data, "completion")


def test_get_formatted_prompt_joins_with_newlines_and_takes_keywords() -> None:
    data = {"messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]}
    assert get_formatted_prompt(data=data, call_type="completion") == "a\nb"


def _rewritten(data: dict[str, Any], call_type: str) -> dict[str, Any]:
    changed = rewrite_request_texts(data, call_type, lambda text: f"<{text}>")
    assert changed is True
    return data


def test_rewrite_chat_writes_back_to_every_place() -> None:
    data = copy.deepcopy(CHAT)
    messages = _rewritten(data, "completion")["messages"]
    assert request_texts(data, "completion") == [f"<{text}>" for text in CHAT_TEXTS]
    assert messages[0]["content"] == "<sys>"
    assert messages[1]["content"][0] == {"type": "text", "text": "<dev>"}
    assert messages[2]["content"][0]["text"] == "<u1>"
    assert messages[2]["content"][1] == CHAT["messages"][2]["content"][1]
    assert messages[2]["content"][2]["text"] == "<u2>"
    assert messages[3]["tool_calls"][1]["function"]["arguments"] == '<{"q": "a2"}>'
    assert messages[5]["content"][0]["text"] == "<t2>"
    assert messages[6]["refusal"] == "<r1>"
    assert messages[7]["content"][0]["refusal"] == "<r2>"
    assert messages[8]["function_call"]["arguments"] == "<fc>"
    assert messages[3]["content"] is None


def test_rewrite_keeps_the_same_objects() -> None:
    data = copy.deepcopy(CHAT)
    messages, parts = data["messages"], data["messages"][2]["content"]
    rewrite_request_texts(data, "completion", str.upper)
    assert data["messages"] is messages and data["messages"][2]["content"] is parts


def test_rewrite_prompts_and_inputs() -> None:
    assert _rewritten({"prompt": "p"}, "text_completion") == {"prompt": "<p>"}
    assert _rewritten({"prompt": ["a", [1], "b"]}, "text_completion") == {"prompt": ["<a>", [1], "<b>"]}
    assert _rewritten({"input": "e"}, "embeddings") == {"input": "<e>"}
    assert _rewritten({"input": ["e", "f"]}, "embeddings") == {"input": ["<e>", "<f>"]}
    assert _rewritten({"input": [{"type": "text", "text": "m"}]}, "moderation") == {
        "input": [{"type": "text", "text": "<m>"}]
    }
    assert _rewritten({"prompt": "img"}, "image_generation") == {"prompt": "<img>"}
    assert _rewritten({"prompt": "aud"}, "audio_transcription") == {"prompt": "<aud>"}


def test_rewrite_responses_items() -> None:
    data = copy.deepcopy(RESPONSES)
    _rewritten(data, "responses")
    assert request_texts(data, "responses") == [f"<{text}>" for text in RESPONSES_TEXTS]
    assert data["instructions"] == "<ins>"
    assert data["input"][0]["content"] == "<m1>"
    assert data["input"][1]["content"][0]["text"] == "<m2>"
    assert data["input"][4]["output"] == "<fo>"
    assert _rewritten({"input": "s"}, "responses") == {"input": "<s>"}


def test_rewrite_reports_no_change() -> None:
    data = copy.deepcopy(CHAT)
    assert rewrite_request_texts(data, "completion", lambda text: text) is False
    assert data == CHAT
    assert rewrite_request_texts({"input": [1, 2]}, "embeddings", str.upper) is False
