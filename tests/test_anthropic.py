"""Anthropic's Messages API (``/v1/messages``): the route, identity, refusals, errors and streams, on the raw bytes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import fastapi
import orjson
import pytest

from asgi_llm_guard import (
    LLMHookMiddleware,
    RejectRequest,
    UpstreamError,
    get_formatted_prompt,
    request_texts,
)
from asgi_llm_guard.sse import SSEParser

from .apps import Script, body_messages, client, http_scope, receive_body

MESSAGE = 'Refused: "quoted" \n\nevent: message_stop\ndata: {}\n\n<b>'
MODEL = "claude-test"


def request(content: Any = "good morning", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": content}], **extra}


def event(kind: str, **fields: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


def stream_events(words: tuple[str, ...] = ("Hello", " there")) -> list[bytes]:
    """An Anthropic stream as the API sends it: one text block, one word per delta."""
    message = {
        "id": "msg_app",
        "type": "message",
        "role": "assistant",
        "model": "claude-internal",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    return [
        event("message_start", message=message),
        event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        event("ping"),
        *[event("content_block_delta", index=0, delta={"type": "text_delta", "text": w}) for w in words],
        event("content_block_stop", index=0),
        event(
            "message_delta",
            delta={"stop_reason": "end_turn", "stop_sequence": None},
            usage={"output_tokens": 5},
        ),
        event("message_stop"),
    ]


class Claude:
    """A downstream app speaking the Messages API; records what it receives."""

    def __init__(
        self, events: list[bytes] | None = None, *, status: int = 200, raise_after: int | None = None
    ):
        self.events = events if events is not None else stream_events()
        self.status = status
        self.raise_after = raise_after
        self.received: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.states: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = await receive_body(receive)
        self.paths.append(scope["path"])
        self.states.append(scope.get("state", {}).get("llm_guard"))
        data = orjson.loads(body) if body else {}
        self.received.append(data)
        if self.status >= 400:
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "the app says no"}}
            await self._whole(send, self.status, orjson.dumps(error), b"application/json")
            return
        if data.get("stream") is not True:
            answer = {
                "id": "msg_app",
                "type": "message",
                "role": "assistant",
                "model": data.get("model"),
                "content": [{"type": "text", "text": "Hello there"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 2},
            }
            await self._whole(send, 200, orjson.dumps(answer), b"application/json")
            return
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
        await send(start)
        for number, piece in enumerate(self.events):
            if self.raise_after is not None and number == self.raise_after:
                raise RuntimeError("the model went away")
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        if self.raise_after == len(self.events):
            raise RuntimeError("the model went away after its last event")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _whole(self, send: Any, status: int, body: bytes, content_type: bytes) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def guarded(*hooks: object, app: Claude | None = None, **options: Any) -> tuple[LLMHookMiddleware, Claude]:
    down = app or Claude()
    return LLMHookMiddleware(down, hooks=list(hooks), **options), down


def parsed_events(body: bytes) -> list[tuple[str | None, Any]]:
    events = SSEParser().feed(body)
    assert b"".join(e.raw for e in events) == body
    return [(e.event, orjson.loads(e.data) if e.data is not None else None) for e in events]


def kinds(body: bytes) -> list[str | None]:
    return [name for name, _ in parsed_events(body)]


class Refuse:
    def __init__(self, how: str = "return") -> None:
        self.how = how
        self.call_types: list[str] = []

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str
    ) -> Any:
        self.call_types.append(call_type)
        data["model"] = "some-internal-model"  # a refusal still names the model the client asked for
        if self.how == "raise":
            raise RejectRequest(MESSAGE)
        return MESSAGE


class Raise:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str
    ) -> Any:
        raise self.exc


# -- the route ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/v1/messages", "/messages", "/api/v1/messages", "//V1//Messages/", "/v1/messages/", "/MESSAGES"]
)
async def test_messages_route_is_guarded_in_every_spelling(path: str) -> None:
    hook = Refuse()
    app, down = guarded(hook)
    async with client(app) as c:
        response = await c.post(path, json=request())
    assert response.status_code == 200
    assert response.json()["type"] == "message"
    assert hook.call_types == ["anthropic_messages"]
    assert down.received == []


async def test_messages_route_under_a_mount_prefix_in_root_path() -> None:
    hook = Refuse()
    app, down = guarded(hook)
    script = Script(body_messages(orjson.dumps(request())))
    await app(http_scope("/llm/v1/messages", root_path="/llm"), script.receive, script.send)
    assert script.status == 200
    assert orjson.loads(script.body)["content"][0]["text"] == MESSAGE
    assert down.received == []


@pytest.mark.parametrize(
    "path", ["/v1/messages/count_tokens", "/v1/messages/batches", "/v1/messages/batches/msgbatch_1/cancel"]
)
async def test_count_tokens_and_batches_are_not_guarded(path: str) -> None:
    hook = Refuse()
    app, down = guarded(hook)
    async with client(app) as c:
        response = await c.post(path, json=request())
    assert response.status_code == 200
    assert hook.call_types == []
    assert down.paths == [path]


async def test_the_app_finds_the_call_type_and_final_data_in_scope_state() -> None:
    class Edit:
        async def async_pre_call_hook(
            self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str
        ) -> Any:
            data["messages"][0]["content"] = "edited"

    app, down = guarded(Edit())
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request())
    assert response.status_code == 200
    assert down.received[0]["messages"][0]["content"] == "edited"
    assert down.states[0].call_type == "anthropic_messages"
    assert down.states[0].data == down.received[0]


# -- identity ----------------------------------------------------------------------------------------------


async def test_end_user_is_metadata_user_id() -> None:
    seen: list[Any] = []

    class Look:
        async def async_pre_call_hook(
            self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str
        ) -> Any:
            seen.append(user_api_key_dict.end_user_id)

    app, _ = guarded(Look())
    async with client(app) as c:
        await c.post("/v1/messages", json=request(metadata={"user_id": "u-42"}))
        await c.post("/v1/messages", json=request(user="not-anthropic's-field"))
    assert seen == ["u-42", None]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"metadata": {}},
        {"metadata": {"user_id": ""}},
        {"metadata": {"user_id": 7}},
        {"metadata": "u"},
        {"user": "u-1"},
    ],
)
async def test_enforce_user_param_wants_metadata_user_id(extra: dict[str, Any]) -> None:
    hook = Refuse()
    app, down = guarded(hook, enforce_user_param=True)
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(**extra))
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "'metadata.user_id' param not passed in. 'enforce_user_param'=True",
        },
    }
    assert hook.call_types == []
    assert down.received == []


async def test_enforce_user_param_passes_with_metadata_user_id() -> None:
    app, down = guarded(enforce_user_param=True)
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(metadata={"user_id": "u-1"}))
    assert response.status_code == 200
    assert len(down.received) == 1


async def test_failure_hooks_see_the_enforce_user_param_error_with_its_param() -> None:
    seen: list[Any] = []

    class Fail:
        async def async_post_call_failure_hook(
            self, request_data: Any, original_exception: Any, user_api_key_dict: Any
        ):
            seen.append((original_exception.status_code, original_exception.param))

    app, _ = guarded(Fail(), enforce_user_param=True)
    async with client(app) as c:
        await c.post("/v1/messages", json=request())
    assert seen == [(400, "metadata.user_id")]


# -- refusals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["return", "raise"])
async def test_refusal_is_a_normal_message(how: str) -> None:
    app, down = guarded(Refuse(how))
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    body = response.json()
    assert body.pop("id").startswith("msg_")
    assert body == {
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": MESSAGE}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    assert down.received == []


@pytest.mark.parametrize("how", ["return", "raise"])
async def test_streamed_refusal_raw_bytes(how: str) -> None:
    app, down = guarded(Refuse(how))
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    events = parsed_events(response.content)
    message_id = events[0][1]["message"]["id"]
    assert message_id.startswith("msg_")
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    expected = b"".join(
        [
            event("message_start", message=message),
            event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
            event("content_block_delta", index=0, delta={"type": "text_delta", "text": MESSAGE}),
            event("content_block_stop", index=0),
            event(
                "message_delta",
                delta={"stop_reason": "end_turn", "stop_sequence": None},
                usage={"output_tokens": 0},
            ),
            event("message_stop"),
        ]
    )
    assert response.content == expected
    assert b"[DONE]" not in response.content
    assert down.received == []


async def test_moderation_refusal_is_answered_as_a_message() -> None:
    class Moderate:
        async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
            assert call_type == "anthropic_messages"
            raise RejectRequest("not today")

    for stream in (False, True):
        app, _ = guarded(Moderate())
        async with client(app) as c:
            response = await c.post("/v1/messages", json=request(stream=stream))
        assert response.status_code == 200
        assert response.headers["x-llm-guard-rejected"] == "moderation"
        if stream:
            assert kinds(response.content) == [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        else:
            assert response.json()["content"] == [{"type": "text", "text": "not today"}]


async def test_post_call_refusal_replaces_the_answer() -> None:
    class Check:
        async def async_post_call_success_hook(
            self, data: dict, user_api_key_dict: Any, response: Any
        ) -> Any:
            assert response["content"][0]["text"] == "Hello there"
            raise RejectRequest("withheld")

    app, _ = guarded(Check())
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request())
    assert response.status_code == 200
    assert response.headers["x-llm-guard-rejected"] == "post_call"
    assert response.json()["content"] == [{"type": "text", "text": "withheld"}]
    assert response.json()["model"] == MODEL


async def test_post_call_success_hook_rewrites_the_message() -> None:
    class Edit:
        async def async_post_call_success_hook(
            self, data: dict, user_api_key_dict: Any, response: Any
        ) -> Any:
            response["content"][0]["text"] = "[redacted]"

    app, _ = guarded(Edit())
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request())
    assert response.json()["content"] == [{"type": "text", "text": "[redacted]"}]
    assert int(response.headers["content-length"]) == len(response.content)


# -- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (409, "invalid_request_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "api_error"),
        (529, "overloaded_error"),
    ],
)
async def test_errors_use_anthropics_envelope_and_types(status: int, kind: str) -> None:
    exc = fastapi.HTTPException(status_code=status, detail="go away", headers={"Retry-After": "7"})
    app, down = guarded(Raise(exc))
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request())
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    assert response.json() == {"type": "error", "error": {"type": kind, "message": "go away"}}
    assert down.received == []


async def test_streamed_request_error_before_the_stream_is_json_with_its_status() -> None:
    app, _ = guarded(Raise(fastapi.HTTPException(429, detail="slow down")))
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(stream=True))
    assert response.status_code == 429
    assert response.json() == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}


async def test_a_broken_hook_is_a_500_api_error_naming_it() -> None:
    class Broken:
        async def async_pre_call_hook(
            self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str
        ) -> Any:
            raise ValueError("secret prompt text")

    app, _ = guarded(Broken())
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request())
    assert response.status_code == 500
    assert response.json() == {
        "type": "error",
        "error": {"type": "api_error", "message": "pre_call hook Broken failed"},
    }


async def test_a_hook_timeout_is_a_503_api_error() -> None:
    class Slow:
        async def async_pre_call_hook(
            self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str
        ) -> Any:
            await asyncio.sleep(5)

    app, _ = guarded(Slow(), hook_timeout=0.01)
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request())
    assert response.status_code == 503
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "api_error"


async def test_a_body_over_the_limit_is_request_too_large() -> None:
    app, down = guarded(max_body_bytes=100)
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request("x" * 200))
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    assert response.json()["type"] == "error"
    assert down.received == []


async def test_the_apps_own_error_passes_through_and_failure_hooks_see_it() -> None:
    seen: list[Any] = []

    class Fail:
        async def async_post_call_failure_hook(
            self, request_data: Any, original_exception: Any, user_api_key_dict: Any
        ):
            seen.append(original_exception)

    app, _ = guarded(Fail(), app=Claude(status=529))
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request())
    assert response.status_code == 529
    assert response.json()["error"] == {"type": "overloaded_error", "message": "the app says no"}
    assert isinstance(seen[0], UpstreamError)
    assert (seen[0].status_code, seen[0].message) == (529, "the app says no")


# -- bad input ---------------------------------------------------------------------------------------------

PROMPT = "my very private prompt"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1, 2]", None),
        (b'"just a string"', None),
        (b"{not json", None),
        (orjson.dumps({"model": MODEL, "messages": PROMPT}), "messages: Input should be a valid list"),
        (
            orjson.dumps({"model": MODEL, "messages": {"role": "user", "content": PROMPT}}),
            "messages: Input should be a valid list",
        ),
        (orjson.dumps({"model": MODEL, "messages": None}), "messages: Input should be a valid list"),
        (orjson.dumps({**request(PROMPT), "stream": "true"}), "stream: Input should be a valid boolean"),
        (orjson.dumps({**request(PROMPT), "stream": 1}), "stream: Input should be a valid boolean"),
        (
            orjson.dumps({**request(PROMPT), "system": 5}),
            "system: Input should be a string or a list of content blocks",
        ),
        (
            orjson.dumps({**request(PROMPT), "system": {"text": PROMPT}}),
            "system: Input should be a string or a list of content blocks",
        ),
        (
            orjson.dumps({**request(PROMPT), "system": [PROMPT]}),
            "system: Input should be a string or a list of content blocks",
        ),
    ],
)
async def test_bad_input_is_a_400_in_anthropics_envelope(
    body: bytes, message: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    hook = Refuse()
    app, down = guarded(hook)
    with caplog.at_level(logging.DEBUG):
        async with client(app) as c:
            response = await c.post(
                "/v1/messages", content=body, headers={"content-type": "application/json"}
            )
    assert response.status_code == 400
    error = response.json()
    assert set(error) == {"type", "error"} and error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    if message is not None:
        assert error["error"]["message"] == message
    assert down.received == []
    assert hook.call_types == []
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and PROMPT in r.getMessage()]


@pytest.mark.parametrize("system", ["be brief", [{"type": "text", "text": "be brief"}], []])
async def test_valid_system_prompts_pass(system: Any) -> None:
    app, down = guarded()
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(system=system, stream=False))
    assert response.status_code == 200
    assert down.received[0]["system"] == system


async def test_openai_routes_keep_their_lenient_stream_field() -> None:
    # The type checks are Anthropic's: an OpenAI request with "stream": "yes" reaches the app as before.
    from .apps import Downstream, chat

    down = Downstream()
    app = LLMHookMiddleware(down, hooks=[])
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat(stream="yes"))
    assert response.status_code == 200
    assert len(down.received) == 1


# -- texts -------------------------------------------------------------------------------------------------


def test_request_texts_read_system_and_message_blocks_in_order() -> None:
    data = {
        "system": [{"type": "text", "text": "sys1"}, {"type": "text", "text": "sys2"}],
        "messages": [
            {"role": "user", "content": "plain"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "block"},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [{"type": "text", "text": "tool says"}],
                    },
                    {"type": "tool_result", "tool_use_id": "u", "content": "tool string"},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"q": "x"}}],
            },
        ],
    }
    assert request_texts(data, "anthropic_messages") == [
        "sys1",
        "sys2",
        "plain",
        "block",
        "tool says",
        "tool string",
    ]
    assert (
        get_formatted_prompt(
            {"system": "s", "messages": [{"role": "user", "content": "u"}]}, "anthropic_messages"
        )
        == "s\nu"
    )


@pytest.mark.parametrize(
    "body", [{}, {"messages": "x"}, {"system": 5, "messages": [None, {"content": 3}]}, []]
)
def test_request_texts_of_odd_anthropic_bodies_do_not_raise(body: Any) -> None:
    assert request_texts(body, "anthropic_messages") == []


async def test_pre_call_hook_reads_the_prompt_with_get_formatted_prompt() -> None:
    class Block:
        async def async_pre_call_hook(
            self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str
        ) -> Any:
            if "Hello world" in get_formatted_prompt(data, call_type):
                return "no greetings"
            return None

    app, down = guarded(Block())
    async with client(app) as c:
        blocked = await c.post("/v1/messages", json=request([{"type": "text", "text": "say Hello world"}]))
        passed = await c.post("/v1/messages", json=request("hi"))
    assert blocked.json()["content"] == [{"type": "text", "text": "no greetings"}]
    assert passed.json()["content"] == [{"type": "text", "text": "Hello there"}]
    assert len(down.received) == 1


# -- streams through the streaming hooks -------------------------------------------------------------------


class Seen:
    def __init__(self, refuse_on: str | None = None, raise_on: str | None = None, at: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.refuse_on, self.raise_on, self.at = refuse_on, raise_on, at
        self.count: dict[str, int] = {}

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: Any) -> Any:
        self.events.append(response)
        kind = response["type"]
        number = self.count[kind] = self.count.get(kind, -1) + 1
        if kind == self.refuse_on and number == self.at:
            raise RejectRequest(MESSAGE)
        if kind == self.raise_on and number == self.at:
            raise fastapi.HTTPException(429, detail="too many tokens", headers={"Retry-After": "3"})
        if kind == "content_block_delta":
            return {**response, "delta": {**response["delta"], "text": response["delta"]["text"].upper()}}
        return None


async def test_per_chunk_hook_sees_each_events_data_and_may_replace_it() -> None:
    hook = Seen()
    app, _ = guarded(hook)
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(stream=True))
    original = stream_events()
    assert [e["type"] for e in hook.events] == [
        orjson.loads(p.split(b"data: ", 1)[1])["type"] for p in original
    ]
    expected = list(original)
    expected[3] = event("content_block_delta", index=0, delta={"type": "text_delta", "text": "HELLO"})
    expected[4] = event("content_block_delta", index=0, delta={"type": "text_delta", "text": " THERE"})
    assert response.content == b"".join(expected)


def _close(index: int, open_block: int | None, output_tokens: int) -> bytes:
    pieces = [event("content_block_stop", index=open_block)] if open_block is not None else []
    pieces += [
        event("content_block_start", index=index, content_block={"type": "text", "text": ""}),
        event("content_block_delta", index=index, delta={"type": "text_delta", "text": MESSAGE}),
        event("content_block_stop", index=index),
        event(
            "message_delta",
            delta={"stop_reason": "end_turn", "stop_sequence": None},
            usage={"output_tokens": output_tokens},
        ),
        event("message_stop"),
    ]
    return b"".join(pieces)


async def test_mid_stream_refusal_closes_the_open_block_and_adds_one_at_the_next_index() -> None:
    hook = Seen(refuse_on="content_block_delta", at=1)
    app, _ = guarded(hook)
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(stream=True))
    assert response.status_code == 200
    original = stream_events()
    upper = event("content_block_delta", index=0, delta={"type": "text_delta", "text": "HELLO"})
    assert response.content == b"".join([*original[:3], upper]) + _close(1, 0, 1)
    assert kinds(response.content).count("message_start") == 1
    assert b"[DONE]" not in response.content


async def test_mid_stream_refusal_between_blocks_opens_the_next_index_without_a_stop() -> None:
    events = stream_events()
    second_start = event(
        "content_block_start",
        index=1,
        content_block={"type": "tool_use", "id": "t", "name": "f", "input": {}},
    )
    second_stop = event("content_block_stop", index=1)
    app_events = [*events[:-3], events[-3], second_start, second_stop, *events[-2:]]
    hook = Seen(refuse_on="message_delta")
    app, _ = guarded(hook, app=Claude(app_events))
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(stream=True))
    sent = kinds(response.content)
    assert sent.count("message_start") == 1
    assert response.content.endswith(_close(2, None, 1))


async def test_refusal_on_the_first_event_is_a_whole_refused_stream() -> None:
    hook = Seen(refuse_on="message_start")
    app, _ = guarded(hook)
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(stream=True))
    assert response.headers["x-llm-guard-rejected"] == "streaming"
    assert kinds(response.content) == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert parsed_events(response.content)[0][1]["message"]["model"] == MODEL


async def test_mid_stream_error_is_an_error_event_then_the_end() -> None:
    hook = Seen(raise_on="content_block_stop")
    app, _ = guarded(hook)
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(stream=True))
    assert response.status_code == 200
    error = event("error", error={"type": "rate_limit_error", "message": "too many tokens"})
    assert response.content.endswith(b"\n\n" + error)
    assert kinds(response.content)[-2:] == ["content_block_delta", "error"]
    assert b"[DONE]" not in response.content


async def test_an_app_raising_mid_stream_ends_with_an_error_event() -> None:
    for hooks in ((), (Seen(),)):
        app, _ = guarded(*hooks, app=Claude(raise_after=4))
        async with client(app) as c:
            response = await c.post("/v1/messages", json=request(stream=True))
        assert response.status_code == 200
        last = parsed_events(response.content)[-1]
        assert last == (
            "error",
            {
                "type": "error",
                "error": {
                    "type": "api_error",
                    "message": "The downstream app failed while handling the request.",
                },
            },
        )
        assert b"[DONE]" not in response.content


async def test_iterator_hook_may_buffer_and_rewrite_events() -> None:
    class Buffer:
        async def async_post_call_streaming_iterator_hook(
            self, user_api_key_dict: Any, response: AsyncIterator[dict[str, Any]], request_data: dict
        ) -> AsyncIterator[dict[str, Any]]:
            held = [chunk async for chunk in response]
            text = "".join(c["delta"]["text"] for c in held if c["type"] == "content_block_delta")
            for chunk in held:
                if chunk["type"] == "content_block_delta":
                    if text:
                        yield {**chunk, "delta": {"type": "text_delta", "text": text[::-1]}}
                        text = ""
                    continue
                yield chunk

    app, _ = guarded(Buffer())
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(stream=True))
    events = parsed_events(response.content)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[3][1]["delta"]["text"] == "ereht olleH"
    assert all(data["type"] == name for name, data in events)


async def test_iterator_hook_refusing_mid_stream_closes_the_message() -> None:
    class Cut:
        async def async_post_call_streaming_iterator_hook(
            self, user_api_key_dict: Any, response: AsyncIterator[dict[str, Any]], request_data: dict
        ) -> AsyncIterator[dict[str, Any]]:
            async for chunk in response:
                if chunk["type"] == "content_block_delta" and "there" in chunk["delta"]["text"]:
                    raise RejectRequest(MESSAGE)
                yield chunk

    app, _ = guarded(Cut())
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(stream=True))
    assert response.content.endswith(_close(1, 0, 1))
    assert kinds(response.content).count("message_start") == 1


async def test_streaming_hook_args_and_failure_hook_on_a_broken_stream() -> None:
    failures: list[Any] = []

    class Both(Seen):
        async def async_post_call_failure_hook(
            self, request_data: Any, original_exception: Any, user_api_key_dict: Any
        ):
            failures.append(type(original_exception).__name__)

    app, _ = guarded(Both(raise_on="content_block_delta"))
    async with client(app) as c:
        await c.post("/v1/messages", json=request(stream=True))
    assert failures == ["HTTPException"]


# -- the docs' example -------------------------------------------------------------------------------------


async def test_docs_anthropic_snippet_refuses_as_a_message_and_wants_metadata_user_id() -> None:
    import runpy
    from pathlib import Path

    snippet = Path(__file__).resolve().parents[1] / "docs" / "snippets" / "anthropic_route.py"
    app = runpy.run_path(str(snippet))["app"]
    async with client(app) as c:
        refused = await c.post("/v1/messages", json=request("the s3cr3t is", metadata={"user_id": "u-1"}))
        anonymous = await c.post("/v1/messages", json=request("hello"))
    assert refused.status_code == 200
    assert refused.json()["content"] == [{"type": "text", "text": "I can't share that."}]
    assert anonymous.status_code == 400
    assert anonymous.json()["error"]["message"].startswith("'metadata.user_id' param not passed in")


# -- after message_stop the stream is over for the client --------------------------------------------------


@pytest.mark.parametrize("with_hook", [False, True])
async def test_an_app_raising_after_message_stop_adds_no_error_event(with_hook: bool) -> None:
    # Regression: the error event went out after message_stop, and the SDKs raise on it for a message they had
    # already finished.
    events = stream_events()
    hooks = (Seen(),) if with_hook else ()
    app, _ = guarded(*hooks, app=Claude(events, raise_after=len(events)))
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(stream=True))
    assert kinds(response.content)[-1] == "message_stop"
    assert b"event: error" not in response.content


async def test_an_iterator_hook_refusing_after_message_stop_adds_nothing() -> None:
    class Late:
        async def async_post_call_streaming_iterator_hook(
            self, user_api_key_dict: Any, response: AsyncIterator[dict[str, Any]], request_data: dict
        ) -> AsyncIterator[dict[str, Any]]:
            async for chunk in response:
                yield chunk
            raise RejectRequest(MESSAGE)

    app, _ = guarded(Late())
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(stream=True))
    assert kinds(response.content) == [kind for kind, _ in parsed_events(b"".join(stream_events()))]


@pytest.mark.parametrize("split", ["whole", "bytes_of_7", "crlf"])
async def test_per_chunk_hook_output_is_the_same_however_the_app_splits_its_events(split: str) -> None:
    # One event per message takes the rewriter's fast path; any other split takes the parser: same events out.
    original = stream_events()
    raw = b"".join(original)
    if split == "whole":
        pieces = [raw]
    elif split == "bytes_of_7":
        pieces = [raw[i : i + 7] for i in range(0, len(raw), 7)]
    else:
        pieces = [event.replace(b"\n", b"\r\n") for event in original]
    hook = Seen()
    app, _ = guarded(hook, app=Claude(pieces))
    async with client(app) as c:
        response = await c.post("/v1/messages", json=request(stream=True))
    events = parsed_events(response.content)
    assert [name for name, _ in events] == [name for name, _ in parsed_events(raw)]
    deltas = [data["delta"]["text"] for name, data in events if name == "content_block_delta"]
    assert deltas == ["HELLO", " THERE"]
    assert len(hook.events) == len(original)
