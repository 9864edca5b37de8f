"""Guardrails (docs/guardrails.md) as the official ``openai`` and ``anthropic`` SDKs see them on a real uvicorn
server, for what tests/integration/test_guardrails_sdk.py (streamed answers) does not cover: requests masked in
place, refusals as answers or as 400s, an HTTPException's status, selection through ``extra_body``, and the
applied-guardrails header."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import openai
import pytest
from starlette.exceptions import HTTPException

from asgi_llm_guard import LLMHookMiddleware
from tests.servers import serve
from tests.test_guardrails_contract import HEADER, App, Masks

pytestmark = pytest.mark.anyio


class Strict(Masks):
    """Masks and refuses like Masks; answers "forbidden" with a 403."""

    async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
        if any("forbidden" in text for text in inputs["texts"]):
            raise HTTPException(status_code=403, detail="Not for this key.")
        return await super().apply_guardrail(inputs, request_data, input_type)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, App]]:
    app = App()
    guards = [Strict(guardrail_name="strict", default_on=True), Masks(guardrail_name="asked-for")]
    async with serve(LLMHookMiddleware(app, hooks=guards)) as base:
        yield base, app


@pytest.fixture
async def oai(server: tuple[str, App]) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=server[0] + "/v1", api_key="sk-x", max_retries=0) as client:
        yield client


@pytest.fixture
async def claude(server: tuple[str, App]) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=server[0], api_key="sk-ant", max_retries=0) as client:
        yield client


async def test_openai_chat_masked_both_ways_with_the_header(oai: openai.AsyncOpenAI, server: tuple[str, App]) -> None:
    raw = await oai.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "system", "content": "sys s3cr3t"}, {"role": "user", "content": "u s3cr3t"}]
    )
    assert raw.headers[HEADER] == "strict"
    assert raw.parse().choices[0].message.content == "out [X]"
    assert [m["content"] for m in server[1].received[0]["messages"]] == ["sys [X]", "u [X]"]


async def test_openai_extra_body_guardrails_selects_and_is_not_forwarded(
    oai: openai.AsyncOpenAI, server: tuple[str, App]
) -> None:
    raw = await oai.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], extra_body={"guardrails": ["asked-for"]}
    )
    assert raw.headers[HEADER] == "strict,asked-for"
    assert "guardrails" not in server[1].received[0]


async def test_openai_refusal_is_an_answer_on_chat_and_responses(oai: openai.AsyncOpenAI) -> None:
    chat = await oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "rm -rf /"}])
    assert chat.choices[0].message.content == "I can't help with that."
    responses = await oai.responses.create(model="m", input="rm -rf /")
    assert responses.output_text == "I can't help with that."
    text = await oai.completions.create(model="m", prompt="rm -rf /")
    assert text.choices[0].text == "I can't help with that."


async def test_openai_responses_input_and_output_masked(oai: openai.AsyncOpenAI, server: tuple[str, App]) -> None:
    answer = await oai.responses.create(model="m", instructions="i s3cr3t", input="in s3cr3t")
    assert answer.output_text == "out [X]"
    assert (server[1].received[0]["instructions"], server[1].received[0]["input"]) == ("i [X]", "in [X]")


async def test_openai_refusal_on_embeddings_and_images_is_a_bad_request(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as embeddings:
        await oai.embeddings.create(model="m", input="rm -rf /")
    with pytest.raises(openai.BadRequestError) as images:
        await oai.images.generate(model="m", prompt="rm -rf /")
    for caught in (embeddings, images):
        assert caught.value.status_code == 400
        assert caught.value.response.headers[HEADER] == "strict"
        assert "I can't help with that." in str(caught.value)


async def test_openai_http_exception_keeps_its_status(oai: openai.AsyncOpenAI, server: tuple[str, App]) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "forbidden"}])
    assert caught.value.status_code == 403 and "Not for this key." in str(caught.value)
    assert server[1].received == []


async def test_anthropic_masked_both_ways_and_refused_as_a_message(
    claude: anthropic.AsyncAnthropic, server: tuple[str, App]
) -> None:
    raw = await claude.messages.with_raw_response.create(
        model="m", max_tokens=5, system="sys s3cr3t", messages=[{"role": "user", "content": "u s3cr3t"}]
    )
    assert raw.headers[HEADER] == "strict"
    message = await raw.parse()
    assert message.content[0].text == "out [X]"  # type: ignore[union-attr]
    assert server[1].received[0]["system"] == "sys [X]"
    assert server[1].received[0]["messages"][0]["content"] == "u [X]"
    refused = await claude.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "rm -rf"}])
    assert refused.content[0].text == "I can't help with that."  # type: ignore[union-attr]
    with pytest.raises(anthropic.PermissionDeniedError):
        await claude.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "forbidden"}])
