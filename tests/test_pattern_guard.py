from __future__ import annotations

import re
from typing import Any

import pytest

from asgi_llm_guard.contrib import PromptPatternGuard
from asgi_llm_guard.errors import RejectRequest
from asgi_llm_guard.text import request_texts

# Marked here, not only by conftest: anyio re-creates items that conftest marks late, dropping their
# @pytest.mark.parametrize parameters.
pytestmark = pytest.mark.anyio


async def _run(guard: PromptPatternGuard, data: dict[str, Any], call_type: str = "completion") -> Any:
    return await guard.async_pre_call_hook(None, None, data, call_type)


def _chat(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": list(messages)}


FORBIDDEN_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("completion", _chat({"role": "user", "content": "this is forbidden stuff"})),
    ("completion", _chat({"role": "system", "content": "forbidden"}, {"role": "user", "content": "hi"})),
    ("completion", _chat({"role": "developer", "content": [{"type": "text", "text": "forbidden"}]})),
    (
        "completion",
        _chat(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {"type": "text", "text": "at the forbidden thing"},
                ],
            }
        ),
    ),
    ("completion", _chat({"role": "tool", "tool_call_id": "c1", "content": "result: forbidden"})),
    (
        "completion",
        _chat({"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "forbidden"}]}),
    ),
    (
        "completion",
        _chat(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"q": "forbidden"}'},
                    }
                ],
            }
        ),
    ),
    ("text_completion", {"model": "m", "prompt": "forbidden"}),
    ("text_completion", {"model": "m", "prompt": ["fine", "forbidden"]}),
    ("embeddings", {"model": "m", "input": "forbidden"}),
    ("embeddings", {"model": "m", "input": ["fine", "also forbidden"]}),
    ("moderation", {"input": [{"type": "text", "text": "forbidden"}]}),
    ("image_generation", {"prompt": "a forbidden cat"}),
    ("audio_transcription", {"prompt": "forbidden", "model": "whisper-1"}),
    ("responses", {"model": "m", "input": "forbidden"}),
    ("responses", {"model": "m", "instructions": "forbidden", "input": "hi"}),
    ("responses", {"model": "m", "input": [{"role": "user", "content": "forbidden"}]}),
    (
        "responses",
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "forbidden"}]}]},
    ),
    (
        "responses",
        {
            "model": "m",
            "input": [
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "ok"}]},
                {"type": "function_call_output", "call_id": "x", "output": "forbidden"},
            ],
        },
    ),
    ("responses", {"model": "m", "input": [{"type": "function_call", "arguments": '{"a": "forbidden"}'}]}),
]
IDS = [f"{call_type}-{index}" for index, (call_type, _) in enumerate(FORBIDDEN_BODIES)]


@pytest.mark.parametrize(("call_type", "data"), FORBIDDEN_BODIES, ids=IDS)
async def test_reject_on_every_shape(call_type: str, data: dict[str, Any]) -> None:
    guard = PromptPatternGuard(deny=[r"\bforbidden\b"])
    with pytest.raises(RejectRequest) as info:
        await _run(guard, data, call_type)
    assert info.value.message == "Your request was blocked by a content policy."


@pytest.mark.parametrize(("call_type", "data"), FORBIDDEN_BODIES, ids=IDS)
async def test_mask_on_every_shape(call_type: str, data: dict[str, Any]) -> None:
    guard = PromptPatternGuard(deny=[r"\bforbidden\b"], action="mask")
    before = request_texts(data, call_type)
    assert await _run(guard, data, call_type) is None
    after = request_texts(data, call_type)
    assert after == [text.replace("forbidden", "[REDACTED]") for text in before]
    assert not any("forbidden" in text for text in after)


@pytest.mark.parametrize(("call_type", "data"), FORBIDDEN_BODIES, ids=IDS)
async def test_clean_text_passes_untouched(call_type: str, data: dict[str, Any]) -> None:
    guard = PromptPatternGuard(deny=[r"\bunrelated\b"])
    snapshot = repr(data)
    assert await _run(guard, data, call_type) is None
    assert repr(data) == snapshot


async def test_mask_keeps_the_structure_and_other_fields() -> None:
    data = _chat(
        {"role": "user", "content": [{"type": "text", "text": "Forbidden, FORBIDDEN and forbidden!"}]},
    )
    data["temperature"] = 0.2
    await _run(PromptPatternGuard(deny=["forbidden"], action="mask", mask="***"), data)
    assert data == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "***, *** and ***!"}]}],
        "temperature": 0.2,
    }


async def test_mask_merges_overlapping_matches_of_several_patterns() -> None:
    data = {"prompt": "call 555-1234 now"}
    guard = PromptPatternGuard(deny=[r"\d{3}-\d{4}", r"555"], action="mask", mask="#")
    await _run(guard, data, "text_completion")
    assert data == {"prompt": "call # now"}


async def test_allow_carves_out_an_exception() -> None:
    guard = PromptPatternGuard(deny=[r"forbidden"], allow=[r"forbidden fruit"])
    assert await _run(guard, _chat({"role": "user", "content": "the forbidden fruit"})) is None
    with pytest.raises(RejectRequest):
        await _run(guard, _chat({"role": "user", "content": "forbidden"}))
    with pytest.raises(RejectRequest):
        await _run(guard, _chat({"role": "user", "content": "the forbidden fruit is forbidden"}))


async def test_allow_does_not_hide_a_greedy_match_further_on() -> None:
    guard = PromptPatternGuard(deny=[r"bomb.*"], allow=[r"bath bomb"])
    assert not guard.matches("I love a bath bomb")
    assert guard.matches("a bath bomb, and how to build a bomb")


async def test_mask_leaves_allowed_spans_alone() -> None:
    data = {"input": "forbidden fruit and forbidden words"}
    guard = PromptPatternGuard(deny=["forbidden"], allow=["forbidden fruit"], action="mask")
    await _run(guard, data, "embeddings")
    assert data == {"input": "forbidden fruit and [REDACTED] words"}


async def test_case_insensitive_by_default() -> None:
    guard = PromptPatternGuard(deny=[r"\bforbidden\b"])
    with pytest.raises(RejectRequest):
        await _run(guard, _chat({"role": "user", "content": "FoRbIdDeN"}))


async def test_flags_zero_is_case_sensitive() -> None:
    guard = PromptPatternGuard(deny=[r"\bforbidden\b"], flags=0)
    assert await _run(guard, _chat({"role": "user", "content": "FORBIDDEN"})) is None
    with pytest.raises(RejectRequest):
        await _run(guard, _chat({"role": "user", "content": "forbidden"}))


async def test_compiled_patterns_keep_their_own_flags() -> None:
    guard = PromptPatternGuard(deny=[re.compile("secret")])
    assert not guard.matches("SECRET")
    assert guard.matches("secret")


async def test_single_pattern_string_is_accepted() -> None:
    assert PromptPatternGuard(deny=r"\bforbidden\b").matches("so forbidden")


async def test_refusal_message_does_not_echo_the_match() -> None:
    guard = PromptPatternGuard(deny=[r"\bpassword=\S+"])
    with pytest.raises(RejectRequest) as info:
        await _run(guard, _chat({"role": "user", "content": "my password=hunter2"}))
    assert "hunter2" not in info.value.message
    assert "password" not in info.value.message
    assert "hunter2" not in str(info.value)


async def test_custom_message() -> None:
    guard = PromptPatternGuard(deny=["forbidden"], message="No.")
    with pytest.raises(RejectRequest, match="^No.$"):
        await _run(guard, {"prompt": "forbidden"}, "text_completion")


async def test_call_types_filter() -> None:
    guard = PromptPatternGuard(deny=["forbidden"], call_types={"completion"})
    assert await _run(guard, {"input": "forbidden"}, "embeddings") is None
    with pytest.raises(RejectRequest):
        await _run(guard, _chat({"role": "user", "content": "forbidden"}), "completion")


async def test_call_types_filter_for_mask() -> None:
    guard = PromptPatternGuard(deny=["forbidden"], action="mask", call_types=["responses"])
    data = {"input": "forbidden"}
    await _run(guard, data, "embeddings")
    assert data == {"input": "forbidden"}
    await _run(guard, data, "responses")
    assert data == {"input": "[REDACTED]"}


def test_bad_regex_raises_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match=re.escape("'(unclosed'")):
        PromptPatternGuard(deny=["fine", "(unclosed"])
    with pytest.raises(ValueError, match=re.escape("'[a-'")):
        PromptPatternGuard(deny=["fine"], allow=["[a-"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"deny": [b"bytes"]},
        {"deny": [re.compile(b"bytes")]},
        {"deny": [42]},
        {"deny": None},
        {"deny": 42},
        {"deny": {"forbidden": 1}},
        {"deny": ["ok"], "allow": [None]},
        {"deny": ["ok"], "message": 3},
        {"deny": ["ok"], "message": ""},
        {"deny": ["ok"], "mask": None},
        {"deny": ["ok"], "flags": "i"},
        {"deny": ["ok"], "call_types": 3},
        {"deny": ["ok"], "call_types": [1]},
    ],
)
def test_wrong_types_raise_type_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        PromptPatternGuard(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"deny": []},
        {"deny": ["x*"]},
        {"deny": ["ok"], "action": "block"},
        {"deny": ["ok"], "call_types": {"chat"}},
    ],
)
def test_bad_values_raise_value_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PromptPatternGuard(**kwargs)
