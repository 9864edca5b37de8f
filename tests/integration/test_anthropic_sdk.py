"""The Anthropic Messages route (docs/routes.md) through a real uvicorn server, spoken to by the official
``anthropic`` Python SDK: ``messages.create`` (streamed and not) and the ``messages.stream`` helper.

Every refusal must parse as a normal message, every error the middleware produces, before or during a stream,
must raise the SDK's ``APIStatusError`` subclass for its status, and a stream never holds a second
``message_start``. The npm SDK runs the same cases in ``test_anthropic_node_sdk.py``; the raw bytes of the
refusal and error streams through uvicorn and hypercorn are checked at the end of this module.

One guarded app serves every case: what the hooks do is chosen by the last user message (see
``tests/anthropic_scenario.py``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from asgi_llm_guard import CallHook, LLMHookMiddleware
from tests.anthropic_scenario import (
    ANSWER,
    DELTAS,
    ERROR_TYPES,
    MAX_BODY,
    MODEL,
    REFUSED_MODERATION,
    REFUSED_POST_CALL,
    REFUSED_PRE_CALL,
    REFUSED_STREAMING,
    REWRITTEN,
    SDK_ERRORS,
    SYSTEM,
    USER,
    Model,
    PreCallOnly,
    Scenario,
    Server,
    guarded_app,
    request,
)
from tests.servers import SERVERS, serve


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    app, model = guarded_app()
    async with serve(app) as base_url:
        yield Server(base_url, model)


@pytest.fixture
async def claude(server: Server) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=server.base_url, api_key="sk-ant-test", max_retries=0) as client:
        yield client


@pytest.fixture(params=["streaming hook", "no streaming hook"])
async def either_claude(request: pytest.FixtureRequest) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """A client of the app with the ``Scenario`` hook (streams parsed), or with a pre-call hook only (streams
    passed through as bytes): the two stream paths of the middleware."""
    app, _ = guarded_app(Scenario() if request.param == "streaming hook" else PreCallOnly())
    async with serve(app) as base_url:
        async with anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-ant-test", max_retries=0) as client:
            yield client


@dataclass
class Outcome:
    """What the SDK made of an answer, however it was asked for."""

    texts: list[str]
    stop_reason: str | None
    model: str
    event_types: list[str]  # empty for a JSON answer


HOWS = ["create", "create-stream", "stream-helper"]


async def ask(claude: anthropic.AsyncAnthropic, how: str, prompt: str, **extra: Any) -> Outcome:
    params = request(prompt, **extra)
    if how == "create":
        message = await claude.messages.create(**params)
        return Outcome([b.text for b in message.content if b.type == "text"], message.stop_reason, message.model, [])
    if how == "create-stream":
        stream = await claude.messages.create(**params, stream=True)
        events = [event async for event in stream]
        blocks: dict[int, str] = {}
        stop_reason = None
        for event in events:
            if event.type == "content_block_start" and event.content_block.type == "text":
                blocks[event.index] = event.content_block.text
            elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                blocks[event.index] += event.delta.text
            elif event.type == "message_delta":
                stop_reason = event.delta.stop_reason
        assert events and events[0].type == "message_start"
        model = events[0].message.model
        return Outcome([blocks[i] for i in sorted(blocks)], stop_reason, model, [e.type for e in events])
    async with claude.messages.stream(**params) as helper:
        types = [event.type async for event in helper]
        final = await helper.get_final_message()
    return Outcome([b.text for b in final.content if b.type == "text"], final.stop_reason, final.model, types)


# -- answers and refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", HOWS)
async def test_a_guarded_request_is_answered_and_the_app_receives_the_final_body(
    claude: anthropic.AsyncAnthropic, server: Server, how: str
) -> None:
    outcome = await ask(claude, how, "good morning")

    assert outcome.texts == [ANSWER]
    assert outcome.stop_reason == "end_turn"
    expected = {**request("good morning"), "system": SYSTEM}
    if how != "create":
        expected["stream"] = True
    assert server.model.received == [expected]
    assert server.model.guards == [("anthropic_messages", USER)]  # the end user is metadata.user_id


@pytest.mark.parametrize(("how", "prompt", "message"), [
    *((how, "refuse", REFUSED_PRE_CALL) for how in HOWS),
    *((how, "moderate", REFUSED_MODERATION) for how in HOWS),
    # a JSON answer runs no streaming hook: a refusal on message_start is a streamed case only
    *((how, "refuse at start", REFUSED_STREAMING) for how in HOWS[1:]),
])
async def test_a_refusal_before_anything_was_sent_parses_as_a_normal_message(
    claude: anthropic.AsyncAnthropic, how: str, prompt: str, message: str
) -> None:
    outcome = await ask(claude, how, prompt)

    assert outcome.texts == [message]
    assert outcome.stop_reason == "end_turn"
    assert outcome.model == MODEL  # the model the client asked for
    if how != "create":
        assert outcome.event_types.count("message_start") == 1
        assert outcome.event_types[-1] == "message_stop"


async def test_a_post_call_refusal_parses_as_a_normal_message(claude: anthropic.AsyncAnthropic) -> None:
    raw = await claude.messages.with_raw_response.create(**request("refuse after"))
    message = await raw.parse()

    assert raw.headers["x-llm-guard-rejected"] == "post_call"
    assert [b.text for b in message.content if b.type == "text"] == [REFUSED_POST_CALL]
    assert (message.type, message.role, message.stop_reason, message.model) == (
        "message", "assistant", "end_turn", MODEL)
    assert message.id.startswith("msg_")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (0, 0)


@pytest.mark.parametrize("how", ["create-stream", "stream-helper"])
async def test_a_refusal_mid_stream_closes_the_message_with_one_more_text_block(
    claude: anthropic.AsyncAnthropic, how: str
) -> None:
    outcome = await ask(claude, how, "refuse mid-stream")

    assert outcome.texts == [DELTAS[0], REFUSED_STREAMING]
    assert outcome.stop_reason == "end_turn"
    assert outcome.event_types.count("message_start") == 1
    assert outcome.event_types[-1] == "message_stop"


@pytest.mark.parametrize("how", ["create-stream", "stream-helper"])
@pytest.mark.parametrize("event", ["message_delta", "message_stop"])
async def test_a_refusal_after_the_text_block_closed_adds_one_more_block(
    claude: anthropic.AsyncAnthropic, how: str, event: str
) -> None:
    outcome = await ask(claude, how, f"refuse on {event}")

    assert outcome.texts == [ANSWER, REFUSED_STREAMING]
    assert outcome.stop_reason == "end_turn"
    assert outcome.event_types.count("message_start") == 1
    assert outcome.event_types.count("message_stop") == 1 and outcome.event_types[-1] == "message_stop"


@pytest.mark.parametrize("how", ["create-stream", "stream-helper"])
async def test_the_per_chunk_hook_edits_text_deltas(claude: anthropic.AsyncAnthropic, how: str) -> None:
    outcome = await ask(claude, how, "shout")

    assert outcome.texts == [ANSWER.upper()]
    assert outcome.stop_reason == "end_turn"


async def test_a_refusal_carries_the_rejected_stage_header(claude: anthropic.AsyncAnthropic) -> None:
    raw = await claude.messages.with_raw_response.create(**request("refuse"))

    assert raw.status_code == 200
    assert raw.headers["x-llm-guard-rejected"] == "pre_call"
    assert raw.headers["content-type"].startswith("application/json")


async def test_a_post_call_hook_replaces_the_message(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(**request("rewrite after"))

    assert [b.text for b in message.content if b.type == "text"] == [REWRITTEN]
    assert (message.id, message.stop_reason) == ("msg_down", "end_turn")


@pytest.mark.parametrize("how", HOWS)
async def test_a_failure_hook_replaces_the_error(claude: anthropic.AsyncAnthropic, how: str) -> None:
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        await ask(claude, how, "status 409")

    assert caught.value.body == {"type": "error", "error": {"type": "permission_error",
                                                            "message": "Replaced by the failure hook."}}


class JoinTextDeltas(CallHook):
    """An iterator hook that buffers the whole stream and sends its text as one delta (a window of one stream)."""

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: AsyncIterator[dict[str, Any]], request_data: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        events = [event async for event in response]
        deltas = [e for e in events if e.get("type") == "content_block_delta"]
        joined = "".join(e["delta"]["text"] for e in deltas).replace("friend", "reader")
        for event in events:
            if event.get("type") != "content_block_delta":
                yield event
            elif event is deltas[0]:
                yield {**event, "delta": {"type": "text_delta", "text": joined}}


@pytest.mark.parametrize("how", ["create-stream", "stream-helper"])
async def test_an_iterator_hook_buffers_and_rewrites_the_events(how: str) -> None:
    app, _ = guarded_app(JoinTextDeltas())
    async with serve(app) as base_url:
        async with anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-ant-test", max_retries=0) as claude:
            outcome = await ask(claude, how, "good morning")

    assert outcome.texts == ["Hello there, reader."]
    assert outcome.event_types.count("content_block_delta") == 1
    assert outcome.stop_reason == "end_turn"


async def test_count_tokens_and_batches_are_not_guarded(claude: anthropic.AsyncAnthropic, server: Server) -> None:
    # No metadata.user_id and a prompt the hooks would refuse: both reach the app, unguarded.
    refused = [{"role": "user", "content": "refuse"}]
    count = await claude.messages.count_tokens(model=MODEL, messages=refused)
    batch = await claude.messages.batches.create(
        requests=[{"custom_id": "a", "params": {"model": MODEL, "max_tokens": 8, "messages": refused}}]
    )

    assert count.input_tokens == 7
    assert batch.id == "msgbatch_1"
    assert server.model.received == [
        {"model": MODEL, "messages": refused},
        {"requests": [{"custom_id": "a", "params": {"model": MODEL, "max_tokens": 8, "messages": refused}}]},
    ]


async def test_the_route_is_guarded_under_a_mount_prefix() -> None:
    model = Model()
    outer = Starlette(routes=[Mount("/anthropic", app=model)])
    app = LLMHookMiddleware(outer, hooks=[Scenario()], enforce_user_param=True)
    async with serve(app) as base_url:
        async with anthropic.AsyncAnthropic(base_url=f"{base_url}/anthropic", api_key="sk-ant-test",
                                            max_retries=0) as claude:
            refused = await claude.messages.create(**request("refuse"))
            with pytest.raises(anthropic.BadRequestError):
                await claude.messages.create(**request("good morning", metadata={}))
            answered = await claude.messages.create(**request("good morning"))

    assert [b.text for b in refused.content if b.type == "text"] == [REFUSED_PRE_CALL]
    assert [b.text for b in answered.content if b.type == "text"] == [ANSWER]
    assert model.received == [{**request("good morning"), "system": SYSTEM}]


# -- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500, 529])
async def test_a_hook_status_error_raises_the_sdk_error_for_its_status(
    claude: anthropic.AsyncAnthropic, server: Server, how: str, status: int
) -> None:
    with pytest.raises(SDK_ERRORS[status]) as caught:
        await ask(claude, how, f"status {status}")

    error = caught.value
    assert error.status_code == status
    assert error.body == {"type": "error", "error": {"type": ERROR_TYPES[status], "message": f"Stopped with {status}."}}
    assert error.response.headers["x-llm-guard-rejected"] == "pre_call"
    assert error.response.headers["content-type"].startswith("application/json")
    if status == 429:
        assert error.response.headers["retry-after"] == "7"
    assert server.model.received == []


@pytest.mark.parametrize("how", HOWS)
async def test_a_broken_hook_is_a_500_that_names_the_hook_not_the_exception(
    claude: anthropic.AsyncAnthropic, how: str
) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        await ask(claude, how, "bug")

    assert caught.value.body == {"type": "error",
                                 "error": {"type": "api_error", "message": "pre_call hook Scenario failed"}}


@pytest.mark.parametrize("how", HOWS)
async def test_a_hook_timeout_is_a_503(claude: anthropic.AsyncAnthropic, how: str) -> None:
    with pytest.raises(anthropic.ServiceUnavailableError) as caught:
        await ask(claude, how, "slow")

    assert caught.value.status_code == 503
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == ERROR_TYPES[503]


@pytest.mark.parametrize("how", HOWS)
async def test_without_metadata_user_id_the_request_is_a_400_naming_the_field(
    claude: anthropic.AsyncAnthropic, server: Server, how: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await ask(claude, how, "good morning", metadata={})

    assert caught.value.body is not None
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "metadata.user_id" in caught.value.message
    assert server.model.received == []


@pytest.mark.parametrize("how", HOWS)
async def test_a_body_over_the_limit_is_a_413(
    claude: anthropic.AsyncAnthropic, server: Server, how: str
) -> None:
    with pytest.raises(anthropic.ContentTooLargeError) as caught:
        await ask(claude, how, "x" * MAX_BODY)

    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    assert server.model.received == []


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("bad", [{"messages": "not a list"}, {"system": 42}])
async def test_a_bad_body_is_a_400(
    claude: anthropic.AsyncAnthropic, server: Server, how: str, bad: dict[str, Any]
) -> None:
    params = {**request("good morning"), **bad}
    with pytest.raises(anthropic.BadRequestError) as caught:
        if how == "create":
            await claude.messages.create(**params)
        elif how == "create-stream":
            await claude.messages.create(**params, stream=True)
        else:
            async with claude.messages.stream(**params) as helper:
                await helper.get_final_message()

    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert server.model.received == []


@pytest.mark.parametrize("how", ["create-stream", "stream-helper"])
@pytest.mark.parametrize("status", [400, 429, 500])
async def test_an_error_mid_stream_raises_the_sdk_stream_error(
    claude: anthropic.AsyncAnthropic, how: str, status: int
) -> None:
    # The response started with 200, so the SDK raises APIStatusError from the error event, holding its envelope.
    types: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        if how == "create-stream":
            async for event in await claude.messages.create(**request(f"status {status} mid-stream"), stream=True):
                types.append(event.type)
        else:
            async with claude.messages.stream(**request(f"status {status} mid-stream")) as helper:
                async for event in helper:
                    types.append(event.type)

    assert caught.value.body == {"type": "error",
                                 "error": {"type": ERROR_TYPES[status], "message": f"Stopped with {status}."}}
    assert types.count("message_start") == 1
    assert "message_stop" not in types


@pytest.mark.parametrize("how", ["create-stream", "stream-helper"])
async def test_a_hook_timeout_mid_stream_raises_the_sdk_stream_error(
    claude: anthropic.AsyncAnthropic, how: str
) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        await ask(claude, how, "slow mid-stream")

    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == ERROR_TYPES[503]


@pytest.mark.parametrize("how", HOWS)
async def test_the_models_own_error_reaches_the_sdk_as_it_is(
    either_claude: anthropic.AsyncAnthropic, how: str
) -> None:
    with pytest.raises(anthropic.OverloadedError) as caught:
        await ask(either_claude, how, "overloaded")

    assert caught.value.status_code == 529
    assert caught.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert caught.value.response.headers["retry-after"] == "3"
    assert "x-llm-guard-rejected" not in caught.value.response.headers


@pytest.mark.parametrize("how", ["create-stream", "stream-helper"])
async def test_the_model_breaking_mid_stream_raises_the_sdk_stream_error(
    either_claude: anthropic.AsyncAnthropic, how: str
) -> None:
    # Guards against an OpenAI-shaped error event (data: {"error": ...} without event: error, or a [DONE]) on the
    # path that passes a stream through unparsed: the anthropic SDK skips unnamed events and would end quietly.
    with pytest.raises(anthropic.APIStatusError) as caught:
        await ask(either_claude, how, "break mid-stream")

    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "api_error"
    assert "the model broke" not in str(caught.value.body)  # the exception's text is logged, not sent


@pytest.mark.parametrize("how", ["create-stream", "stream-helper"])
async def test_a_refusal_in_a_tool_use_block_closes_it_and_adds_a_text_block(
    claude: anthropic.AsyncAnthropic, how: str
) -> None:
    params = request("refuse in a tool block")
    if how == "create-stream":
        events = [event async for event in await claude.messages.create(**params, stream=True)]
        types = [event.type for event in events]
        starts = [event.content_block.type for event in events if event.type == "content_block_start"]
        stops = [event.index for event in events if event.type == "content_block_stop"]
        refusal = [event.delta.text for event in events
                   if event.type == "content_block_delta" and event.delta.type == "text_delta" and event.index == 2]
        assert (starts, stops, refusal) == (["text", "tool_use", "text"], [0, 1, 2], [REFUSED_STREAMING])
        stop_reason = next(event.delta.stop_reason for event in events if event.type == "message_delta")
    else:
        async with claude.messages.stream(**params) as helper:
            types = [event.type async for event in helper]
            final = await helper.get_final_message()
        assert [block.type for block in final.content] == ["text", "tool_use", "text"]
        last = final.content[2]
        assert last.type == "text" and last.text == REFUSED_STREAMING
        stop_reason = final.stop_reason
    assert stop_reason == "end_turn"
    assert types.count("message_start") == 1 and types[-1] == "message_stop"


# -- raw bytes through the real server -----------------------------------------------------------------------


@pytest.fixture(params=sorted(SERVERS))
async def raw_server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    """The guarded app under uvicorn, then hypercorn: the event bytes must not depend on the server."""
    app, model = guarded_app()
    async with SERVERS[request.param](app) as base_url:
        yield Server(base_url, model)


def parse_stream(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Each event as (its ``event:`` name, its decoded ``data:``), checking that every event is exactly an
    ``event:`` line and a ``data:`` line whose ``type`` is the event's name."""
    assert body.endswith(b"\n\n")
    events = []
    for block in body.decode().split("\n\n")[:-1]:
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        name, data = lines[0][len("event: "):], json.loads(lines[1][len("data: "):])
        assert data["type"] == name
        events.append((name, data))
    return events


async def post_raw(server: Server, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        return await client.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})


async def test_raw_refusal_stream_is_the_anthropic_event_sequence(raw_server: Server) -> None:
    response = await post_raw(raw_server, request("refuse", stream=True))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    assert b"[DONE]" not in response.content
    events = parse_stream(response.content)
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_")
    assert events == [
        ("message_start", {"type": "message_start", "message": {
            "id": start["id"], "type": "message", "role": "assistant", "model": MODEL, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": REFUSED_PRE_CALL}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 0}}),
        ("message_stop", {"type": "message_stop"}),
    ]


async def test_raw_refusal_json_is_the_anthropic_message(raw_server: Server) -> None:
    response = await post_raw(raw_server, request("refuse"))

    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("msg_")
    assert body == {"id": body["id"], "type": "message", "role": "assistant", "model": MODEL,
                    "content": [{"type": "text", "text": REFUSED_PRE_CALL}], "stop_reason": "end_turn",
                    "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}


async def test_raw_mid_stream_refusal_closes_the_open_block_and_adds_one(raw_server: Server) -> None:
    response = await post_raw(raw_server, request("refuse mid-stream", stream=True))

    assert response.status_code == 200
    assert "x-llm-guard-rejected" not in response.headers  # the response had started
    assert b"[DONE]" not in response.content
    events = parse_stream(response.content)
    names = [name for name, _ in events]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta",
                     "content_block_stop", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    assert events[3][1]["delta"] == {"type": "text_delta", "text": DELTAS[0]}
    assert events[4][1] == {"type": "content_block_stop", "index": 0}
    assert events[5][1] == {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}
    assert events[6][1] == {"type": "content_block_delta", "index": 1,
                            "delta": {"type": "text_delta", "text": REFUSED_STREAMING}}
    assert events[7][1] == {"type": "content_block_stop", "index": 1}
    assert events[8][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[9][1] == {"type": "message_stop"}


async def test_raw_refusal_with_no_block_open_adds_the_next_block(raw_server: Server) -> None:
    response = await post_raw(raw_server, request("refuse on message_delta", stream=True))

    events = parse_stream(response.content)
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "ping", *["content_block_delta"] * len(DELTAS),
        "content_block_stop", "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]
    assert [data["index"] for name, data in events if name.startswith("content_block")] == [0, *[0] * len(DELTAS),
                                                                                           0, 1, 1, 1]
    assert events[-4][1]["delta"] == {"type": "text_delta", "text": REFUSED_STREAMING}


@pytest.mark.parametrize("hook", [Scenario, PreCallOnly])
async def test_raw_app_breaking_mid_stream_is_an_error_event_then_the_end(hook: Any) -> None:
    app, model = guarded_app(hook())
    async with serve(app) as base_url:
        response = await post_raw(Server(base_url, model), request("break mid-stream", stream=True))

    assert response.status_code == 200
    assert b"[DONE]" not in response.content
    events = parse_stream(response.content)
    assert [name for name, _ in events] == ["message_start", "content_block_start", "ping",
                                            "content_block_delta", "error"]
    assert events[-1][1]["error"]["type"] == "api_error"


async def test_raw_error_mid_stream_is_one_error_event_then_the_end(raw_server: Server) -> None:
    response = await post_raw(raw_server, request("status 429 mid-stream", stream=True))

    assert response.status_code == 200
    events = parse_stream(response.content)
    assert [name for name, _ in events] == ["message_start", "content_block_start", "ping",
                                            "content_block_delta", "error"]
    assert events[-1][1] == {"type": "error", "error": {"type": "rate_limit_error", "message": "Stopped with 429."}}
