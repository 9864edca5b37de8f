"""Post-call success hooks on JSON responses, failure hooks, and the downstream app's own errors
(docs/reference.md#hooks, #errors)."""

from __future__ import annotations

import gzip
import logging
from typing import Any

import fastapi
import orjson
import pytest

from asgi_llm_guard import LLMHookMiddleware, RejectRequest, UpstreamError

from .apps import Downstream, Script, body_messages, chat, client, guarded, http_scope


class Success:
    def __init__(self, action: str = "replace") -> None:
        self.action = action
        self.calls: list[tuple[dict, Any]] = []

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        self.calls.append((data, response))
        if self.action == "replace":
            return {
                **response,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "REPLACED"}, "finish_reason": "stop"}
                ],
            }
        if self.action == "edit":
            response["choices"][0]["message"]["content"] += " (edited)"
            return None
        if self.action == "reject":
            raise RejectRequest("not shown to you")
        if self.action == "http":
            raise fastapi.HTTPException(451, detail="unavailable for legal reasons")
        if self.action == "bad":
            return {3.14}  # not JSON
        raise ValueError("bug")


class Failure:
    def __init__(self, replace: Any = None, raise_: Exception | None = None) -> None:
        self.replace = replace
        self.raise_ = raise_
        self.calls: list[tuple[dict, BaseException, Any]] = []

    async def async_post_call_failure_hook(
        self, request_data: dict, original_exception: Exception, user_api_key_dict: Any
    ) -> Any:
        self.calls.append((request_data, original_exception, user_api_key_dict))
        if self.raise_ is not None:
            raise self.raise_
        return self.replace


async def test_success_hook_replaces_the_body_and_fixes_content_length() -> None:
    hook = Success("replace")
    app, down = guarded(hook)
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.json()["choices"][0]["message"]["content"] == "REPLACED"
    assert response.headers["content-length"] == str(len(response.content))
    data, seen = hook.calls[0]
    assert data == down.received[0].json
    assert seen["choices"][0]["message"]["content"] == "Hello from the model"


async def test_success_hook_returning_none_keeps_in_place_edits() -> None:
    app, _ = guarded(Success("edit"))
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.json()["choices"][0]["message"]["content"] == "Hello from the model (edited)"
    assert response.headers["content-length"] == str(len(response.content))


async def test_success_hook_refusal_is_answered_as_a_refusal() -> None:
    app, _ = guarded(Success("reject"))
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "not shown to you"
    assert response.json()["model"] == "gpt-test"
    assert response.headers["x-llm-guard-rejected"] == "post_call"


async def test_success_hook_http_exception_replaces_the_answer() -> None:
    app, _ = guarded(Success("http"))
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 451
    assert response.json()["error"]["message"] == "unavailable for legal reasons"
    assert response.headers["x-llm-guard-rejected"] == "post_call"


@pytest.mark.parametrize("action", ["bad", "bug"])
async def test_broken_success_hook_is_a_500_naming_it(action: str) -> None:
    app, _ = guarded(Success(action))
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "post_call hook Success failed"


async def test_success_hooks_skip_streams() -> None:
    hook = Success("replace")
    app, _ = guarded(hook)
    async with client(app) as c:
        streamed = await c.post("/v1/chat/completions", json=chat(stream=True))
    assert b"REPLACED" not in streamed.content
    assert hook.calls == []


async def test_a_non_json_answer_a_success_hook_cannot_read_is_a_502_not_passed_unchecked() -> None:
    """Was: image bytes went to the client past the success hook (tests/test_output_checked.py has the rest)."""
    hook = Success("replace")

    async def image(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"image/png")]})
        await send({"type": "http.response.body", "body": b"\x89PNG"})

    app = LLMHookMiddleware(image, hooks=[hook])
    async with client(app) as c:
        response = await c.post("/v1/images/generations", json={"prompt": "x"})
    assert response.status_code == 502
    assert b"PNG" not in response.content
    assert hook.calls == []


async def test_success_hook_reads_a_gzip_response_and_answers_uncompressed() -> None:
    async def gzipped(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        body = gzip.compress(orjson.dumps({"choices": [{"message": {"content": "zipped"}}]}))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-encoding", b"gzip"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    hook = Success("edit")
    app = LLMHookMiddleware(gzipped, hooks=[hook])
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.json()["choices"][0]["message"]["content"] == "zipped (edited)"
    assert "content-encoding" not in response.headers


async def test_accept_encoding_is_not_forwarded_when_hooks_read_the_response() -> None:
    app, down = guarded(Success("edit"))
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat(), headers={"accept-encoding": "br"})
    assert "accept-encoding" not in down.received[0].headers


async def test_failure_hook_sees_downstream_errors_which_pass_through_unchanged() -> None:
    hook = Failure()
    body = b'{"error": {"message": "model overloaded", "type": "server_error"}}'
    app, down = guarded(hook, downstream=Downstream(status=429, error_body=body))
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 429
    assert response.content == body
    request_data, exc, user = hook.calls[0]
    assert isinstance(exc, UpstreamError)
    assert (exc.status_code, exc.body, exc.message) == (429, body, "model overloaded")
    assert request_data == down.received[0].json
    assert user is down.received[0].state.user_api_key_dict


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "overloaded", "type": "server_error"}}', "overloaded"),
        (b'{"detail": "Not Found"}', '{"detail": "Not Found"}'),
        (b'{"error": "just a string"}', '{"error": "just a string"}'),
        (b'{"message": "top-level"}', '{"message": "top-level"}'),
        (b"plain text", "plain text"),
    ],
)
async def test_upstream_error_message_is_the_envelopes_else_the_body(body: bytes, message: str) -> None:
    hook = Failure()
    app, _ = guarded(hook, downstream=Downstream(status=502, error_body=body))
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat())
    assert hook.calls[0][1].message == message


@pytest.mark.parametrize(
    ("returned", "body"),
    [
        ("replaced", b'"replaced"'),
        ([1, 2], b"[1,2]"),
        (7, b"7"),
    ],
)
async def test_success_hook_return_value_of_any_json_type_replaces_the_body(returned: Any, body: bytes) -> None:
    class Replace:
        async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
            return returned

    app, _ = guarded(Replace())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    assert response.content == body
    assert response.headers["content-length"] == str(len(body))


async def test_success_hook_returning_an_exception_is_treated_as_raised() -> None:
    class Returns:
        async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
            return fastapi.HTTPException(451, detail="not here")

    app, _ = guarded(Returns())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 451
    assert response.json()["error"]["message"] == "not here"
    assert response.headers["x-llm-guard-rejected"] == "post_call"


async def test_success_hook_returning_what_json_cannot_hold_is_its_500() -> None:
    class ReturnsSet:
        async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
            return {1, 2}

    app, _ = guarded(ReturnsSet())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "post_call hook ReturnsSet failed"


async def test_failure_hook_cannot_replace_an_error_once_the_stream_started() -> None:
    class BreaksOnThird:
        def __init__(self) -> None:
            self.seen = 0

        async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> None:
            self.seen += 1
            if self.seen == 3:
                raise fastapi.HTTPException(400, detail="original error")

    hook = Failure(replace=fastapi.HTTPException(418, detail="replacement"))
    app, _ = guarded(BreaksOnThird(), hook)
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat(stream=True))
    assert response.status_code == 200
    events = [line for line in response.text.split("\n\n") if line]
    assert orjson.loads(events[-2].removeprefix("data: "))["error"]["message"] == "original error"
    assert events[-1] == "data: [DONE]"
    assert len(hook.calls) == 1


async def test_downstream_errors_pass_through_without_failure_hooks() -> None:
    app, _ = guarded(Success("replace"), downstream=Downstream(status=404, error_body=b"not here"))
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 404
    assert response.content == b"not here"


async def test_failure_hook_can_replace_the_error() -> None:
    hook = Failure(replace=fastapi.HTTPException(503, detail="try later", headers={"Retry-After": "3"}))
    app, _ = guarded(hook, downstream=Downstream(status=500))
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 503
    assert response.json()["error"] == {
        "message": "try later",
        "type": "internal_server_error",
        "param": None,
        "code": "503",
    }
    assert response.headers["retry-after"] == "3"


async def test_failure_hook_raising_with_status_replaces_the_error() -> None:
    hook = Failure(raise_=fastapi.HTTPException(400, detail="bad"))
    app, _ = guarded(hook, downstream=Downstream(status=500))
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 400


async def test_failure_hook_bug_is_logged_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    hook = Failure(raise_=RuntimeError("secret detail"))
    app, _ = guarded(hook, downstream=Downstream(status=502, error_body=b"bad gateway"))
    with caplog.at_level(logging.ERROR, logger="asgi_llm_guard"):
        async with client(app) as c:
            response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 502 and response.content == b"bad gateway"
    assert any("Traceback (most recent call last)" in record.getMessage() for record in caplog.records)


async def test_failure_hook_is_called_once_for_a_refusal() -> None:
    class RefuseAndWatch(Failure):
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            return "no"

    hook = RefuseAndWatch()
    app, _ = guarded(hook)
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat())
    assert len(hook.calls) == 1
    assert isinstance(hook.calls[0][1], RejectRequest)


async def test_failure_hook_sees_body_errors_with_empty_request_data() -> None:
    hook = Failure()
    app, _ = guarded(hook)
    async with client(app) as c:
        await c.post("/v1/chat/completions", content=b"{not json")
    request_data, exc, _ = hook.calls[0]
    assert request_data == {}
    assert getattr(exc, "status_code", None) == 400


async def test_downstream_that_raises_gets_an_openai_500(caplog: pytest.LogCaptureFixture) -> None:
    hook = Failure()

    async def crashing(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise RuntimeError("internal detail")

    app = LLMHookMiddleware(crashing, hooks=[hook])
    with caplog.at_level(logging.ERROR, logger="asgi_llm_guard"):
        async with client(app) as c:
            response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "internal_server_error"
    assert "internal detail" not in response.text
    assert isinstance(hook.calls[0][1], RuntimeError)
    assert any("Traceback (most recent call last)" in record.getMessage() for record in caplog.records)


async def test_downstream_that_raises_mid_stream_ends_with_an_error_event() -> None:
    async def crashing_stream(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b'data: {"choices": []}\n\n', "more_body": True})
        raise RuntimeError("upstream died")

    app = LLMHookMiddleware(crashing_stream, hooks=[Failure()])
    script = Script(body_messages(orjson.dumps(chat(stream=True))))
    await app(http_scope(), script.receive, script.send)
    assert [m["type"] for m in script.sent] == ["http.response.start"] + ["http.response.body"] * 2
    assert script.sent[-1]["more_body"] is False
    assert script.sent[-1]["body"] == (
        b'data: {"error":{"message":"The downstream app failed while handling the request.",'
        b'"type":"internal_server_error","param":null,"code":"500"}}\n\ndata: [DONE]\n\n'
    )


async def test_downstream_returning_without_a_response_gets_a_500() -> None:
    async def silent(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    app = LLMHookMiddleware(silent, hooks=[Failure()])
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 500


async def test_downstream_body_before_start_is_a_500_and_never_illegal() -> None:
    async def confused(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.body", "body": b"oops"})

    app = LLMHookMiddleware(confused, hooks=[Failure()])
    script = Script(body_messages(orjson.dumps(chat())))
    await app(http_scope(), script.receive, script.send)
    assert [m["type"] for m in script.sent] == ["http.response.start", "http.response.body"]
    assert script.status == 500


async def test_downstream_that_never_ends_its_body_is_closed() -> None:
    async def unfinished(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})

    app = LLMHookMiddleware(unfinished, hooks=[Failure()])
    script = Script(body_messages(orjson.dumps(chat())))
    await app(http_scope(), script.receive, script.send)
    assert script.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_fail_open_success_hook_that_times_out_keeps_the_response() -> None:
    import asyncio

    class Slow:
        timeout = 0.05
        fail_open = True

        async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
            await asyncio.sleep(1)

    app, _ = guarded(Slow())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello from the model"


async def test_failure_hook_gets_traceback_str_only_when_it_asks() -> None:
    seen: dict[str, Any] = {}

    class WantsTraceback:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            raise ValueError("broken on purpose")

        async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                               user_api_key_dict: Any, traceback_str: str | None = None) -> None:
            seen["traceback"] = traceback_str

    app, _ = guarded(WantsTraceback())
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat())
    assert "ValueError: broken on purpose" in seen["traceback"]
    assert "Traceback (most recent call last)" in seen["traceback"]


async def test_an_error_a_failure_hook_puts_in_place_keeps_the_stage_header() -> None:
    class RefuseThenReplace(Failure):
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            raise RejectRequest("refused")

    hook = RefuseThenReplace(replace=fastapi.HTTPException(403, detail="replaced"))
    app, _ = guarded(hook)
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 403
    assert response.json()["error"]["message"] == "replaced"
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
