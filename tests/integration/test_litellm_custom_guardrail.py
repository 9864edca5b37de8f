"""The LiteLLM docs' ``myCustomGuardrail`` (litellm/proxy/guardrails/guardrail_hooks/custom_guardrail.py), unchanged,
in its three modes, through uvicorn and the ``openai`` SDK.

What the LiteLLM proxy does with it (read from ``proxy/utils.py``): a guardrail runs only when ``default_on`` or
the request names it in ``guardrails`` and its mode matches the stage; ``pre_call`` masks "litellm" in the
prompt before the model sees it; ``during_call`` raises ``ValueError`` on "litellm" (a 500, the model's answer
never reaches the client); ``post_call`` raises ``ValueError`` on a ``ModelResponse`` whose text holds "coffee"
(a 500). The ``guardrails`` field never reaches the model.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from asgi_llm_guard import LLMHookMiddleware
from tests.apps import Downstream
from tests.litellm_support import load_litellm, sdk


def guard(mode: str, **options: Any) -> Any:
    load_litellm()
    from litellm.proxy.guardrails.guardrail_hooks.custom_guardrail import myCustomGuardrail

    return myCustomGuardrail(guardrail_name=f"custom-{mode}-guard", event_hook=mode, **options)


PROMPT = [{"role": "user", "content": "tell me about litellm"}]


async def test_pre_call_masks_when_the_request_names_it() -> None:
    down = Downstream()
    async with sdk(LLMHookMiddleware(down, hooks=[guard("pre_call")])) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=PROMPT, extra_body={"guardrails": ["custom-pre_call-guard"]}
        )
    answer = raw.parse()
    assert answer.choices[0].message.content == "Hello from the model"
    assert raw.headers["x-llm-guard-applied-guardrails"] == "custom-pre_call-guard"
    received = down.received[0].json
    assert received["messages"][0]["content"] == "tell me about ********"
    assert "guardrails" not in received


async def test_pre_call_does_not_run_when_not_requested() -> None:
    down = Downstream()
    async with sdk(LLMHookMiddleware(down, hooks=[guard("pre_call")])) as client:
        await client.chat.completions.create(model="gpt-test", messages=PROMPT)
    assert down.received[0].json["messages"][0]["content"] == "tell me about litellm"


async def test_pre_call_default_on_runs_unasked() -> None:
    down = Downstream()
    async with sdk(LLMHookMiddleware(down, hooks=[guard("pre_call", default_on=True)])) as client:
        await client.chat.completions.create(model="gpt-test", messages=PROMPT)
    assert down.received[0].json["messages"][0]["content"] == "tell me about ********"


async def test_pre_call_named_in_metadata() -> None:
    down = Downstream()
    async with sdk(LLMHookMiddleware(down, hooks=[guard("pre_call")])) as client:
        await client.chat.completions.create(
            model="gpt-test", messages=PROMPT, extra_body={"metadata": {"guardrails": ["custom-pre_call-guard"]}}
        )
    received = down.received[0].json
    assert received["messages"][0]["content"] == "tell me about ********"
    assert "metadata" not in received  # it only named the guardrail: consumed, as LiteLLM consumes it


async def test_during_call_blocks() -> None:
    down = Downstream()
    async with sdk(LLMHookMiddleware(down, hooks=[guard("during_call")])) as client:
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(
                model="gpt-test", messages=PROMPT, extra_body={"guardrails": ["custom-during_call-guard"]}
            )
    assert raised.value.status_code == 500
    assert raised.value.response.headers["x-llm-guard-rejected"] == "moderation"


async def test_during_call_blocks_a_stream_before_it_starts() -> None:
    down = Downstream()
    async with sdk(LLMHookMiddleware(down, hooks=[guard("during_call")])) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(
                model="gpt-test",
                messages=PROMPT,
                stream=True,
                extra_body={"guardrails": ["custom-during_call-guard"]},
            )


async def test_during_call_passes_a_clean_prompt() -> None:
    down = Downstream()
    async with sdk(LLMHookMiddleware(down, hooks=[guard("during_call", default_on=True)])) as client:
        answer = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hello"}]
        )
    assert answer.choices[0].message.content == "Hello from the model"


async def test_during_call_not_requested_lets_litellm_through() -> None:
    down = Downstream()
    async with sdk(LLMHookMiddleware(down, hooks=[guard("during_call")])) as client:
        answer = await client.chat.completions.create(model="gpt-test", messages=PROMPT)
    assert answer.choices[0].message.content == "Hello from the model"


async def test_post_call_blocks_coffee_in_a_model_response() -> None:
    down = Downstream(words=("I", " like", " coffee"))
    async with sdk(LLMHookMiddleware(down, hooks=[guard("post_call")])) as client:
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(
                model="gpt-test", messages=PROMPT, extra_body={"guardrails": ["custom-post_call-guard"]}
            )
    assert raised.value.response.headers["x-llm-guard-rejected"] == "post_call"


async def test_post_call_passes_other_answers() -> None:
    down = Downstream(words=("I", " like", " tea"))
    async with sdk(LLMHookMiddleware(down, hooks=[guard("post_call", default_on=True)])) as client:
        answer = await client.chat.completions.create(model="gpt-test", messages=PROMPT)
    assert answer.choices[0].message.content == "I like tea"
    assert answer.usage is not None and answer.usage.total_tokens == 5


async def test_post_call_does_not_run_on_a_pre_call_request() -> None:
    # Named, but for the wrong stage: the proxy checks the mode too.
    down = Downstream(words=("I", " like", " coffee"))
    async with sdk(LLMHookMiddleware(down, hooks=[guard("pre_call")])) as client:
        answer = await client.chat.completions.create(
            model="gpt-test", messages=PROMPT, extra_body={"guardrails": ["custom-pre_call-guard"]}
        )
    assert answer.choices[0].message.content == "I like coffee"


async def test_post_call_is_not_run_for_streams() -> None:
    # The proxy calls async_post_call_success_hook for non-streaming answers only; this class has no stream hook.
    down = Downstream(words=("I", " like", " coffee"))
    async with sdk(LLMHookMiddleware(down, hooks=[guard("post_call", default_on=True)])) as client:
        stream = await client.chat.completions.create(model="gpt-test", messages=PROMPT, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "I like coffee"
