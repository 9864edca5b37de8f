"""LiteLLM's content filter (``guardrail_hooks/litellm_content_filter``), unchanged, through uvicorn and the
``openai`` SDK. It implements only ``apply_guardrail``, so the proxy runs it through its unified guardrail on the
texts of the request (``pre_call``) and of the answer (``post_call``, streamed or not): a ``BLOCK`` match raises
``HTTPException(400, {"error": "Content blocked: ..."})``, a ``MASK`` match rewrites the text in place
(``[KEYWORD_REDACTED]``, ``[<pattern>_REDACTED]``). Here our guardrail engine does the same (docs/litellm.md).
No outside service: nothing to fake."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from asgi_llm_guard import LLMHookMiddleware
from tests.apps import Downstream
from tests.litellm_support import load_litellm, sdk

SSN = "123-45-6789"


def content_filter(**options: Any) -> Any:
    load_litellm()
    from litellm.proxy.guardrails.guardrail_hooks.litellm_content_filter.content_filter import (
        ContentFilterGuardrail,
    )
    from litellm.types.guardrails import BlockedWord, ContentFilterAction, ContentFilterPattern

    options.setdefault("event_hook", ["pre_call", "post_call"])
    return ContentFilterGuardrail(
        guardrail_name="content-filter",
        patterns=[
            ContentFilterPattern(pattern_type="prebuilt", pattern_name="us_ssn", action=ContentFilterAction.BLOCK)
        ],
        blocked_words=[BlockedWord(keyword="topsecret", action=ContentFilterAction.MASK)],
        default_on=True,
        **options,
    )


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


async def test_a_blocked_pattern_in_the_prompt_is_a_400_before_the_model() -> None:
    down = Downstream()
    async with sdk(LLMHookMiddleware(down, hooks=[content_filter()])) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(model="gpt-test", messages=ask(f"my ssn is {SSN}"))
    assert raised.value.body["message"] == "Content blocked: us_ssn pattern detected"  # type: ignore[index]
    assert raised.value.response.headers["x-llm-guard-applied-guardrails"] == "content-filter"
    assert down.received == []


async def test_a_masked_keyword_in_the_prompt_is_rewritten_before_the_model() -> None:
    down = Downstream()
    async with sdk(LLMHookMiddleware(down, hooks=[content_filter()])) as client:
        await client.chat.completions.create(model="gpt-test", messages=ask("the topsecret plan"))
    assert down.received[0].json["messages"][0]["content"] == "the [KEYWORD_REDACTED] plan"


async def test_a_masked_keyword_in_the_answer_is_rewritten() -> None:
    down = Downstream(words=("the ", "topsecret", " plan"))
    async with sdk(LLMHookMiddleware(down, hooks=[content_filter()])) as client:
        answer = await client.chat.completions.create(model="gpt-test", messages=ask("hi"))
    assert answer.choices[0].message.content == "the [KEYWORD_REDACTED] plan"


async def test_a_masked_keyword_split_across_stream_chunks_never_reaches_the_client() -> None:
    down = Downstream(words=("the", " top", "sec", "ret", " plan", " is", " ready"))
    async with sdk(LLMHookMiddleware(down, hooks=[content_filter()])) as client:
        stream = await client.chat.completions.create(model="gpt-test", messages=ask("hi"), stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == "the [KEYWORD_REDACTED] plan is ready"
    assert not any("sec" in piece for piece in pieces)


async def test_a_blocked_pattern_in_a_streamed_answer_stops_the_stream() -> None:
    down = Downstream(words=("your", " ssn", " is ", "123-", "45-", "6789", " ok"))
    async with sdk(LLMHookMiddleware(down, hooks=[content_filter()])) as client:
        seen: list[str] = []
        with pytest.raises(openai.APIError):
            stream = await client.chat.completions.create(model="gpt-test", messages=ask("hi"), stream=True)
            async for chunk in stream:
                if chunk.choices:
                    seen.append(chunk.choices[0].delta.content or "")
    assert "6789" not in "".join(seen) and "123-" not in "".join(seen)


async def test_a_blocked_pattern_in_the_answer_is_a_400() -> None:
    down = Downstream(words=("your ssn is ", SSN))
    async with sdk(LLMHookMiddleware(down, hooks=[content_filter()])) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="gpt-test", messages=ask("hi"))


async def test_pre_call_only_leaves_the_answer_alone() -> None:
    down = Downstream(words=("the ", "topsecret", " plan"))
    async with sdk(LLMHookMiddleware(down, hooks=[content_filter(event_hook="pre_call")])) as client:
        answer = await client.chat.completions.create(model="gpt-test", messages=ask("hi"))
    assert answer.choices[0].message.content == "the topsecret plan"
