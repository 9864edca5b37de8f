"""CustomGuardrail, statement by statement against docs/guardrails.md and docs/reference.md (in process): the
constructor, the texts each route hands over and gets back in place, the outcome of a block on each route, the
applied-guardrails header on every answer, and what a request may select."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from asgi_llm_guard import CustomGuardrail, LLMHookMiddleware, RejectRequest, UserAPIKeyAuth
from tests.apps import client

pytestmark = pytest.mark.anyio

HEADER = "x-llm-guard-applied-guardrails"

ANSWERS: dict[str, Any] = {
    "/v1/chat/completions": {
        "id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "out s3cr3t"}, "finish_reason": "stop"}],
    },
    "/v1/completions": {
        "id": "t", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "text": "out s3cr3t", "finish_reason": "stop"}],
    },
    "/v1/responses": {
        "id": "r", "object": "response", "created_at": 1, "model": "m", "status": "completed",
        "output": [{"type": "message", "id": "m1", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "out s3cr3t", "annotations": []}]}],
    },
    "/v1/messages": {
        "id": "msg", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1},
        "content": [{"type": "text", "text": "out s3cr3t"}],
    },
    "/v1/embeddings": {
        "object": "list", "model": "m", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
    },
    "/v1/images/generations": {"created": 1, "data": [{"url": "https://x/i.png"}]},
}  # fmt: skip


class App:
    """Answers each route with a fixed body of its format and records the JSON it was forwarded."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.received.append(orjson.loads(body))
        answer = orjson.dumps(ANSWERS[scope["path"]])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})


class Masks(CustomGuardrail):
    """Masks s3cr3t, refuses "rm -rf", records what it was given."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple[str, list[str]]] = []

    async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
        self.seen.append((input_type, list(inputs["texts"])))
        if any("rm -rf" in text for text in inputs["texts"]):
            raise RejectRequest("I can't help with that.")
        return {**inputs, "texts": [text.replace("s3cr3t", "[X]") for text in inputs["texts"]]}


def _guarded(*guards: CustomGuardrail, **options: Any) -> tuple[LLMHookMiddleware, App]:
    app = App()
    return LLMHookMiddleware(app, hooks=list(guards), **options), app


# -- construction -------------------------------------------------------------------------------------------


def test_the_constructor_takes_event_hook_and_default_on_by_position_as_documented() -> None:
    # Regression: a LiteLLM-only ``supported_event_hooks`` second parameter took "pre_call" given by position
    # and the construction failed; the documented signature is (guardrail_name, event_hook, default_on, **kwargs).
    guard = CustomGuardrail("g", "pre_call", True)
    assert (guard.guardrail_name, guard.event_hook, guard.default_on) == ("g", "pre_call", True)
    assert guard.should_run_guardrail({}, "pre_call") and not guard.should_run_guardrail({}, "post_call")


def test_a_guardrail_is_a_call_hook_and_keeps_unknown_keywords() -> None:
    from asgi_llm_guard import CallHook

    guard = CustomGuardrail(guardrail_name="g", anything_else={"k": 1})
    assert isinstance(guard, CallHook)
    assert guard.anything_else == {"k": 1}  # type: ignore[attr-defined]


# -- texts in and out, in place, on each route --------------------------------------------------------------


async def test_anthropic_messages_system_string_and_text_blocks_are_masked_in_place() -> None:
    guard = Masks(guardrail_name="g", default_on=True)
    guarded, app = _guarded(guard)
    body = {
        "model": "m", "max_tokens": 5,
        "system": [{"type": "text", "text": "sys s3cr3t"}],
        "messages": [
            {"role": "user", "content": "u s3cr3t"},
            {"role": "assistant", "content": [{"type": "text", "text": "a s3cr3t"},
                                              {"type": "tool_use", "id": "t", "name": "f", "input": {"k": "s3cr3t"}}]},
        ],
    }  # fmt: skip
    async with client(guarded) as c:
        r = await c.post("/v1/messages", json=body)
        plain_system = await c.post("/v1/messages", json={**body, "system": "s s3cr3t"})
    assert r.status_code == 200 and r.headers[HEADER] == "g"
    sent = app.received[0]
    assert sent["system"] == [{"type": "text", "text": "sys [X]"}]
    assert sent["messages"][0]["content"] == "u [X]"
    assert sent["messages"][1]["content"][0] == {"type": "text", "text": "a [X]"}
    assert sent["messages"][1]["content"][1]["input"] == {"k": "s3cr3t"}  # a tool call, not a text
    assert r.json()["content"] == [{"type": "text", "text": "out [X]"}]
    assert app.received[1]["system"] == "s [X]"
    assert plain_system.json()["content"][0]["text"] == "out [X]"


async def test_responses_input_messages_and_output_text_are_masked_in_place() -> None:
    guard = Masks(guardrail_name="g", default_on=True)
    guarded, app = _guarded(guard)
    body = {
        "model": "m", "instructions": "i s3cr3t",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "in s3cr3t"}]},
                  {"role": "user", "content": "plain s3cr3t"}],
    }  # fmt: skip
    async with client(guarded) as c:
        r = await c.post("/v1/responses", json=body)
    assert r.status_code == 200
    sent = app.received[0]
    assert sent["instructions"] == "i [X]"
    assert sent["input"][0]["content"][0]["text"] == "in [X]"
    assert sent["input"][1]["content"] == "plain [X]"
    assert r.json()["output"][0]["content"][0]["text"] == "out [X]"


async def test_a_text_prompt_and_an_embeddings_input_given_as_one_string_are_masked() -> None:
    guarded, app = _guarded(Masks(guardrail_name="g", default_on=True))
    async with client(guarded) as c:
        text = await c.post("/v1/completions", json={"model": "m", "prompt": "p s3cr3t"})
        await c.post("/v1/embeddings", json={"model": "m", "input": "e s3cr3t"})
    assert app.received[0]["prompt"] == "p [X]" and app.received[1]["input"] == "e [X]"
    assert text.json()["choices"][0]["text"] == "out [X]"


async def test_returning_none_or_the_inputs_unchanged_forwards_the_body_as_it_came() -> None:
    class Passes(CustomGuardrail):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            return None if input_type == "request" else inputs

    guarded, app = _guarded(Passes(guardrail_name="p", default_on=True))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "extra": {"kept": [1, 2]}}
    async with client(guarded) as c:
        r = await c.post("/v1/chat/completions", json=body)
    assert app.received == [body]
    assert r.json() == ANSWERS["/v1/chat/completions"] and r.headers[HEADER] == "p"


# -- blocks: the outcome of a refusal or an error, per route ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "rm -rf /"}]}),
        ("/v1/completions", {"model": "m", "prompt": "rm -rf /"}),
        ("/v1/responses", {"model": "m", "input": "rm -rf /"}),
        ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "rm -rf /"}]}),
    ],
)
async def test_a_refusal_is_an_answer_on_the_text_routes(path: str, body: dict[str, Any]) -> None:
    guarded, app = _guarded(Masks(guardrail_name="g", default_on=True))
    async with client(guarded) as c:
        r = await c.post(path, json=body)
    assert r.status_code == 200 and app.received == []
    assert "I can't help with that." in r.text
    assert r.headers[HEADER] == "g" and r.headers["x-llm-guard-rejected"] == "pre_call"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"model": "m", "input": "rm -rf /"}),
        ("/v1/images/generations", {"model": "m", "prompt": "rm -rf /"}),
    ],
)
async def test_a_refusal_is_a_400_elsewhere_with_the_header(path: str, body: dict[str, Any]) -> None:
    guarded, app = _guarded(Masks(guardrail_name="g", default_on=True))
    async with client(guarded) as c:
        r = await c.post(path, json=body)
    assert r.status_code == 400 and app.received == []
    assert r.json()["error"]["message"] == "I can't help with that."
    assert r.headers[HEADER] == "g"


async def test_an_http_exception_blocks_with_its_status_and_the_header() -> None:
    from starlette.exceptions import HTTPException

    class Forbids(CustomGuardrail):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            raise HTTPException(status_code=403, detail="not for you")

    guarded, app = _guarded(Forbids(guardrail_name="f", default_on=True))
    async with client(guarded) as c:
        r = await c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 403 and app.received == []
    assert r.json()["error"]["message"] == "not for you"
    assert r.headers[HEADER] == "f"


async def test_a_failing_or_timed_out_guardrail_answer_carries_the_header() -> None:
    import asyncio

    class Fails(CustomGuardrail):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            raise RuntimeError("bug")

    class Hangs(CustomGuardrail):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            await asyncio.sleep(30)

    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    for guard, status in ((Fails(guardrail_name="f", default_on=True), 500),
                          (Hangs(guardrail_name="h", default_on=True, timeout=0.05), 503)):  # fmt: skip
        guarded, _ = _guarded(guard)
        async with client(guarded) as c:
            r = await c.post("/v1/chat/completions", json=body)
        assert r.status_code == status
        assert r.headers[HEADER] == guard.guardrail_name


async def test_a_response_refusal_replaces_the_answer_on_responses_and_anthropic() -> None:
    class BlocksOutput(CustomGuardrail):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            if input_type == "response":
                raise RejectRequest("withheld")

    guarded, _ = _guarded(BlocksOutput(guardrail_name="b", default_on=True))
    async with client(guarded) as c:
        responses = await c.post("/v1/responses", json={"model": "m", "input": "x"})
        messages = await c.post("/v1/messages", json={"model": "m", "max_tokens": 5,
                                                      "messages": [{"role": "user", "content": "x"}]})
    assert responses.status_code == 200 and "out s3cr3t" not in responses.text
    assert responses.json()["output"][0]["content"][0]["text"] == "withheld"
    assert messages.status_code == 200 and messages.json()["content"][0]["text"] == "withheld"
    assert responses.headers["x-llm-guard-rejected"] == messages.headers["x-llm-guard-rejected"] == "post_call"


# -- selection ------------------------------------------------------------------------------------------------


async def test_names_in_the_header_are_in_order_and_only_those_that_ran() -> None:
    first, second, unnamed = (Masks(guardrail_name=n) for n in ("first", "second", "unnamed"))
    on = Masks(guardrail_name="on", default_on=True)
    guarded, app = _guarded(first, on, second, unnamed)

    async def chat(**extra: Any) -> Any:
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **extra}
        async with client(guarded) as c:
            return await c.post("/v1/chat/completions", json=body)

    assert (await chat()).headers[HEADER] == "on"
    assert (await chat(guardrails=["second", "first"])).headers[HEADER] == "first,on,second"
    assert (await chat(metadata={"guardrails": ["second"], "user": "u"})).headers[HEADER] == "on,second"
    assert unnamed.seen == []
    assert all("guardrails" not in sent for sent in app.received)
    assert app.received[2]["metadata"] == {"user": "u"}


async def test_the_identity_adds_guardrails_and_a_request_cannot_remove_one() -> None:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        return UserAPIKeyAuth(metadata={"guardrails": ["keyed"]})

    keyed = Masks(guardrail_name="keyed")
    guarded, app = _guarded(keyed, Masks(guardrail_name="other"), auth=auth)
    body = {"model": "m", "messages": [{"role": "user", "content": "s3cr3t"}], "guardrails": []}
    async with client(guarded) as c:
        r = await c.post("/v1/chat/completions", json=body)
    assert r.headers[HEADER] == "keyed" and app.received[0]["messages"][0]["content"] == "[X]"


async def test_call_hooks_run_only_at_the_stages_event_hook_names_when_the_identity_selects() -> None:
    calls: list[str] = []

    class Legacy(CustomGuardrail):
        async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):  # type: ignore[no-untyped-def]
            calls.append("pre_call")

        async def async_post_call_success_hook(self, data, user_api_key_dict, response):  # type: ignore[no-untyped-def]
            calls.append("post_call")

    async def auth(scope: Any) -> UserAPIKeyAuth:
        return UserAPIKeyAuth(metadata={"guardrails": ["legacy"]} if scope["path"] == "/v1/chat/completions" else {})

    guarded, _ = _guarded(Legacy(guardrail_name="legacy", event_hook="pre_call"), auth=auth)
    async with client(guarded) as c:
        selected = await c.post("/v1/chat/completions", json={"model": "m", "messages": []})
        unselected = await c.post("/v1/completions", json={"model": "m", "prompt": "x"})
    assert calls == ["pre_call"]  # not post_call (not in event_hook), nothing for the request that did not select it
    assert selected.headers[HEADER] == "legacy" and HEADER not in unselected.headers


# -- during_call ----------------------------------------------------------------------------------------------


async def test_a_during_call_refusal_of_a_streamed_request_is_a_stream_in_the_routes_format() -> None:
    guarded, _ = _guarded(Masks(guardrail_name="d", event_hook="during_call", default_on=True))
    async with client(guarded) as c:
        messages = await c.post("/v1/messages", json={"model": "m", "max_tokens": 3, "stream": True,
                                                      "messages": [{"role": "user", "content": "rm -rf"}]})
        responses = await c.post("/v1/responses", json={"model": "m", "stream": True, "input": "rm -rf"})
    for answer, last in ((messages, "event: message_stop"), (responses, "event: response.completed")):
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        assert answer.headers[HEADER] == "d" and answer.headers["x-llm-guard-rejected"] == "moderation"
        assert "I can't help with that." in answer.text
        assert [line for line in answer.text.splitlines() if line.startswith("event: ")][-1] == last
