"""LiteLLM's Presidio PII masking (``guardrail_hooks/presidio.py``), unchanged, against a local fake of the
Presidio analyzer (``POST /analyze``) and anonymizer (``POST /anonymize``) on 127.0.0.1, through uvicorn and the
``openai`` SDK.

It implements ``apply_guardrail``, so the proxy runs it through its unified guardrail: the prompt's texts are
masked before the model sees them (``<PERSON>``); with ``apply_to_output`` the answer's texts are masked too,
streamed or not; with ``output_parse_pii`` the prompt gets numbered tokens (``<PERSON_1>``), whose originals it
keeps in the request's ``metadata["pii_tokens"]``, and the answer's tokens are put back. That map must never
travel to the model: LiteLLM consumes ``metadata``, and here what hooks add to it is not forwarded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from asgi_llm_guard import LLMHookMiddleware
from tests.apps import Downstream
from tests.litellm_support import FakeService, load_litellm, sdk
from tests.servers import serve

NAMES = {"Jane Doe": "PERSON", "555-0100": "PHONE_NUMBER"}


def presidio_api(path: str, body: Any) -> tuple[int, Any]:
    if path == "/analyze":
        text = body["text"]
        found = []
        for value, entity in NAMES.items():
            start = text.find(value)
            while start >= 0:
                found.append({"entity_type": entity, "start": start, "end": start + len(value), "score": 0.9})
                start = text.find(value, start + 1)
        return 200, found
    if path == "/anonymize":
        text = body["text"]
        items = []
        for result in sorted(body["analyzer_results"], key=lambda r: r["start"], reverse=True):
            token = f"<{result['entity_type']}>"
            text = text[: result["start"]] + token + text[result["end"] :]
            items.append({"entity_type": result["entity_type"], "start": result["start"], "text": token})
        return 200, {"text": text, "items": items}
    return 404, {"error": "not found"}


@asynccontextmanager
async def presidio(**options: Any) -> AsyncIterator[tuple[Any, FakeService]]:
    load_litellm()
    from litellm.proxy.guardrails.guardrail_hooks.presidio import _OPTIONAL_PresidioPIIMasking

    service = FakeService(presidio_api)
    async with serve(service) as base_url:
        guard = _OPTIONAL_PresidioPIIMasking(
            guardrail_name="presidio",
            presidio_analyzer_api_base=f"{base_url}/",
            presidio_anonymizer_api_base=f"{base_url}/",
            event_hook="pre_call",
            default_on=True,
            **options,
        )
        try:
            yield guard, service
        finally:
            await guard._close_http_session()


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


async def test_the_prompt_is_masked_before_the_model() -> None:
    down = Downstream()
    async with presidio() as (guard, service):
        async with sdk(LLMHookMiddleware(down, hooks=[guard])) as client:
            answer = await client.chat.completions.create(
                model="gpt-test", messages=ask("I am Jane Doe, call 555-0100")
            )
    assert down.received[0].json["messages"][0]["content"] == "I am <PERSON>, call <PHONE_NUMBER>"
    assert answer.choices[0].message.content == "Hello from the model"  # apply_to_output off: the answer as is
    assert [path for path, _ in service.requests] == ["/analyze", "/anonymize"]


async def test_a_prompt_without_pii_is_forwarded_as_is() -> None:
    down = Downstream()
    async with presidio() as (guard, _):
        async with sdk(LLMHookMiddleware(down, hooks=[guard])) as client:
            await client.chat.completions.create(model="gpt-test", messages=ask("hello there"))
    assert down.received[0].json["messages"][0]["content"] == "hello there"


async def test_the_answer_is_masked_with_apply_to_output() -> None:
    down = Downstream(words=("Ask ", "Jane Doe", " at ", "555-0100"))
    async with presidio(apply_to_output=True) as (guard, _):
        async with sdk(LLMHookMiddleware(down, hooks=[guard])) as client:
            answer = await client.chat.completions.create(model="gpt-test", messages=ask("who?"))
    assert answer.choices[0].message.content == "Ask <PERSON> at <PHONE_NUMBER>"


async def test_a_streamed_answer_is_masked_with_apply_to_output() -> None:
    down = Downstream(words=("Ask ", "Ja", "ne ", "Doe", " at ", "555-", "0100", " today"))
    async with presidio(apply_to_output=True) as (guard, _):
        async with sdk(LLMHookMiddleware(down, hooks=[guard])) as client:
            stream = await client.chat.completions.create(model="gpt-test", messages=ask("who?"), stream=True)
            pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    text = "".join(pieces)
    assert "Jane" not in text and "0100" not in text
    assert text == "Ask <PERSON> at <PHONE_NUMBER> today"


async def test_output_parse_pii_puts_the_originals_back_and_keeps_the_map_from_the_model() -> None:
    down = Downstream(words=("Hello ", "<PERSON_1>", "!"))
    async with presidio(output_parse_pii=True) as (guard, _):
        async with sdk(LLMHookMiddleware(down, hooks=[guard])) as client:
            answer = await client.chat.completions.create(
                model="gpt-test", messages=ask("I am Jane Doe"), extra_body={"metadata": {"trace": "t-1"}}
            )
    received = down.received[0].json
    assert received["messages"][0]["content"] == "I am <PERSON_1>"
    assert received["metadata"] == {"trace": "t-1"}  # the client's own metadata; no pii_tokens
    assert "Jane" not in down.received[0].body.decode()
    assert answer.choices[0].message.content == "Hello Jane Doe!"


async def test_output_parse_pii_in_a_stream() -> None:
    down = Downstream(words=("Hello ", "<PERS", "ON_1>", "!"))
    async with presidio(output_parse_pii=True) as (guard, _):
        async with sdk(LLMHookMiddleware(down, hooks=[guard])) as client:
            stream = await client.chat.completions.create(model="gpt-test", messages=ask("I am Jane Doe"), stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello Jane Doe!"
    assert "metadata" not in down.received[0].json
