"""The guarded request: body limits and parsing, what the app receives, identity and enforce_user_param
(docs/reference.md#request-body)."""

from __future__ import annotations

import gzip
import hashlib
from typing import Any

import orjson
import pytest

from asgi_llm_guard import LLMHookMiddleware, UserAPIKeyAuth

from .apps import Downstream, Script, body_messages, chat, client, guarded, http_scope


class Rewrite:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        self.seen = data
        return {**data, "model": "rewritten-model", "extra": "é" * 3}


class Refuse:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        return "refused"


def error(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kinds = {400: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error"}
    return {"error": {"message": message, "type": kinds[status], "param": param, "code": str(status)}}


async def test_app_receives_the_rewritten_body_with_matching_headers() -> None:
    app, down = guarded(Rewrite())
    async with client(app) as c:
        response = await c.post(
            "/v1/chat/completions",
            content=orjson.dumps(chat()),
            headers={"content-type": "application/json", "transfer-encoding": "chunked"},
        )
    assert response.status_code == 200
    received = down.received[0]
    assert received.json == {**chat(), "model": "rewritten-model", "extra": "ééé"}
    assert received.headers["content-length"] == str(len(received.body))
    assert received.headers["content-type"] == "application/json"
    assert "transfer-encoding" not in received.headers


async def test_refused_request_never_reaches_the_app() -> None:
    app, down = guarded(Refuse())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    assert down.received == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model": "m", ', "The request body is not valid JSON"),
        (b"[1, 2]", "The request body must be a JSON object, not a JSON list."),
        (b'"text"', "The request body must be a JSON object, not a JSON str."),
        (b"", "The request body is empty; send a JSON object."),
        (b'{"temperature": NaN}', "The request body is not valid JSON"),
        (b'{"text": "\xff\xfe"}', "The request body is not valid JSON"),
        (b"[" * 2000 + b"]" * 2000, "The request body is not valid JSON"),
    ],
)
async def test_bad_bodies_are_400_and_never_forwarded(body: bytes, message: str) -> None:
    app, down = guarded(Rewrite())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(message)
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["code"] == "400"
    assert "x-llm-guard-rejected" not in response.headers
    assert down.received == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "user": "a", "user": "b", "messages": []}',
        b'{"model": "m", "n": 1' + b"0" * 40 + b', "messages": []}',
        b'{"model": "m", "nested": ' + b'{"a": ' * 200 + b"1" + b"}" * 200 + b"}",
    ],
)
async def test_hooks_and_app_see_the_same_values(raw: bytes) -> None:
    class Record:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            self.seen = orjson.dumps(data)

    hook = Record()
    app, down = guarded(hook)
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", content=raw)
    assert response.status_code == 200
    assert down.received[0].body == hook.seen
    assert down.received[0].json == orjson.loads(raw)


async def test_json_sent_as_text_plain_is_still_guarded() -> None:
    hook = Rewrite()
    app, down = guarded(hook)
    async with client(app) as c:
        response = await c.post(
            "/v1/chat/completions", content=orjson.dumps(chat()), headers={"content-type": "text/plain"}
        )
    assert response.status_code == 200
    assert hook.seen["model"] == "gpt-test"
    assert down.received[0].headers["content-type"] == "application/json"
    assert down.received[0].json["model"] == "rewritten-model"


async def test_body_without_content_type_is_still_guarded() -> None:
    app, down = guarded(Refuse())
    script = Script(body_messages(orjson.dumps(chat())))
    await app(http_scope(headers=[]), script.receive, script.send)
    assert script.status == 200
    assert orjson.loads(script.body)["choices"][0]["message"]["content"] == "refused"
    assert down.received == []


async def test_declared_oversize_is_413_without_reading_the_body() -> None:
    app, down = guarded(Rewrite(), max_body_bytes=100)
    script = Script(body_messages(b"x" * 1000, parts=10))
    headers = [(b"content-type", b"application/json"), (b"content-length", b"1000")]
    await app(http_scope(headers=headers), script.receive, script.send)
    assert script.status == 413
    assert orjson.loads(script.body) == error(413, "Request body is larger than the limit of 100 bytes.")
    assert script.receive_calls == 0
    assert down.received == []


async def test_chunked_oversize_stops_reading_at_the_limit() -> None:
    app, down = guarded(Rewrite(), max_body_bytes=100)
    script = Script(body_messages(b"x" * 1000, parts=20))  # 50-byte pieces, no content-length
    await app(http_scope(), script.receive, script.send)
    assert script.status == 413
    assert script.receive_calls == 3
    assert down.received == []


async def test_a_first_piece_over_the_limit_is_413_before_reading_more() -> None:
    app, down = guarded(Rewrite(), max_body_bytes=100)
    script = Script(body_messages(b"x" * 1000, parts=5))  # 200-byte pieces, no content-length
    await app(http_scope(), script.receive, script.send)
    assert script.status == 413
    assert script.receive_calls == 1
    assert down.received == []


async def test_body_exactly_at_the_limit_is_accepted() -> None:
    body = orjson.dumps({**chat(), "pad": ""})
    body = orjson.dumps({**chat(), "pad": "x" * (200 - len(body))})
    assert len(body) == 200
    app, down = guarded(Rewrite(), max_body_bytes=200)
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", content=body)
    assert response.status_code == 200


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_compressed_request_body_is_415(encoding: str) -> None:
    app, down = guarded(Rewrite())
    async with client(app) as c:
        response = await c.post(
            "/v1/chat/completions",
            content=gzip.compress(orjson.dumps(chat())),
            headers={"content-type": "application/json", "content-encoding": encoding},
        )
    assert response.status_code == 415
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert encoding in response.json()["error"]["message"]
    assert down.received == []


async def test_identity_content_encoding_is_fine() -> None:
    app, down = guarded(Rewrite())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat(), headers={"content-encoding": "identity"})
    assert response.status_code == 200


async def test_non_numeric_content_length_is_400() -> None:
    app, down = guarded(Rewrite())
    script = Script(body_messages(orjson.dumps(chat())))
    await app(http_scope(headers=[(b"content-length", b"lots")]), script.receive, script.send)
    assert script.status == 400
    assert down.received == []


async def test_client_leaving_before_the_body_ends_reaches_failure_hooks_and_nothing_is_sent() -> None:
    failures: list[BaseException] = []

    class Failure:
        async def async_post_call_failure_hook(
            self, request_data: dict, original_exception: Exception, user_api_key_dict: Any
        ) -> None:
            failures.append(original_exception)

    app, down = guarded(Failure())
    script = Script([{"type": "http.request", "body": b'{"mod', "more_body": True}, {"type": "http.disconnect"}])
    await app(http_scope(), script.receive, script.send)
    assert script.sent == []
    assert down.received == []
    assert len(failures) == 1 and getattr(failures[0], "status_code", None) == 499


# -- enforce_user_param -----------------------------------------------------------------------------------------

USER_MESSAGE = "'user' param not passed in. 'enforce_user_param'=True"


@pytest.mark.parametrize("user", [None, "", 42, ["u"], "absent"])
async def test_enforce_user_param_rejects_missing_null_empty_and_non_strings(user: Any) -> None:
    failures: list[tuple[dict, BaseException]] = []

    class Both(Rewrite):
        async def async_post_call_failure_hook(
            self, request_data: dict, original_exception: Exception, user_api_key_dict: Any
        ) -> None:
            failures.append((request_data, original_exception))

    hook = Both()
    app, down = guarded(hook, enforce_user_param=True)
    body = chat() if user == "absent" else chat(user=user)
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json() == error(400, USER_MESSAGE, param="user")
    assert not hasattr(hook, "seen")  # checked before any hook runs
    assert down.received == []
    assert failures[0][0] == body
    assert failures[0][1].status_code == 400  # type: ignore[attr-defined]


async def test_enforce_user_param_lets_a_user_through_as_end_user_id() -> None:
    app, down = guarded(Rewrite(), enforce_user_param=True)
    async with client(app) as c:
        response = await c.post("/v1/embeddings", json={"model": "e", "input": "x", "user": "alice"})
    assert response.status_code == 200
    assert down.received[0].state.user_api_key_dict.end_user_id == "alice"


# -- identity ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["authorization", "api-key", "x-api-key"])
async def test_presented_key_is_hashed(header: str) -> None:
    value = "Bearer sk-live-123" if header == "authorization" else "sk-live-123"
    app, down = guarded(Rewrite())
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat(), headers={header: value})
    user = down.received[0].state.user_api_key_dict
    assert user.api_key == hashlib.sha256(b"sk-live-123").hexdigest()
    assert user.token == user.api_key


def test_header_digest_is_remembered_and_agrees_with_the_parse() -> None:
    from asgi_llm_guard.auth import header_digest

    digest = hashlib.sha256(b"sk-1").hexdigest()
    assert header_digest(b"authorization", b"Bearer sk-1") == digest
    assert header_digest(b"authorization", b"Bearer sk-1") == digest  # the second time from the table
    assert header_digest(b"authorization", b"Basic c2stMQ==") is None
    assert header_digest(b"api-key", b"Bearer sk-1") == hashlib.sha256(b"Bearer sk-1").hexdigest()
    assert header_digest(b"x-api-key", bytearray(b" sk-1 ")) == digest  # unhashable: worked out, not remembered


async def test_missing_key_is_not_an_error() -> None:
    app, down = guarded(Rewrite())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    assert down.received[0].state.user_api_key_dict.api_key is None


async def test_user_id_comes_from_an_authentication_middleware() -> None:
    from starlette.authentication import SimpleUser

    app, down = guarded(Rewrite())
    script = Script(body_messages(orjson.dumps(chat())))
    scope = http_scope()
    scope["user"] = SimpleUser("carol")
    await app(scope, script.receive, script.send)
    assert down.received[0].state.user_api_key_dict.user_id == "carol"


async def test_auth_callable_provides_the_identity() -> None:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        return UserAPIKeyAuth(user_id="u", team_id="t", metadata={"tier": "gold"})

    app, down = guarded(Rewrite(), auth=auth)
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat(user="end"))
    user = down.received[0].state.user_api_key_dict
    assert (user.user_id, user.team_id, user.end_user_id, user.metadata) == ("u", "t", "end", {"tier": "gold"})


async def test_auth_callable_rejects_with_its_status_and_headers() -> None:
    from starlette.exceptions import HTTPException

    async def auth(scope: Any) -> UserAPIKeyAuth:
        raise HTTPException(401, detail="Invalid API key", headers={"WWW-Authenticate": "Bearer"})

    app, down = guarded(Rewrite(), auth=auth)
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 401
    assert response.json()["error"] == {
        "message": "Invalid API key",
        "type": "authentication_error",
        "param": None,
        "code": "401",
    }
    assert response.headers["www-authenticate"] == "Bearer"
    assert down.received == []


async def test_auth_callable_that_breaks_is_a_500_without_details() -> None:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        raise RuntimeError("db password=hunter2")

    app, _ = guarded(Rewrite(), auth=auth)
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 500
    assert "hunter2" not in response.text


def test_user_api_key_auth_defaults() -> None:
    assert UserAPIKeyAuth().metadata == {}
    assert UserAPIKeyAuth(user_id="u", team_id="t").team_id == "t"
    assert UserAPIKeyAuth().metadata is not UserAPIKeyAuth().metadata


async def test_guarded_request_state_is_visible_to_a_starlette_handler() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def handler(request: Request) -> JSONResponse:
        guard = request.state.llm_guard
        return JSONResponse(
            {"call_type": guard.call_type, "model": guard.data["model"], "body_model": (await request.json())["model"]}
        )

    inner = Starlette(routes=[Route("/v1/chat/completions", handler, methods=["POST"])])
    app = LLMHookMiddleware(inner, hooks=[Rewrite()])
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.json() == {"call_type": "completion", "model": "rewritten-model", "body_model": "rewritten-model"}


async def test_downstream_sees_client_disconnect_after_the_replayed_body() -> None:
    messages: list[dict] = []

    async def app_reading_twice(scope: Any, receive: Any, send: Any) -> None:
        messages.append(await receive())
        messages.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app = LLMHookMiddleware(app_reading_twice, hooks=[Rewrite()])
    script = Script(body_messages(orjson.dumps(chat())))
    script.disconnect.set()
    await app(http_scope(), script.receive, script.send)
    assert messages[0]["type"] == "http.request" and messages[0]["more_body"] is False
    assert messages[1] == {"type": "http.disconnect"}
    _ = Downstream


async def test_bearer_key_wins_over_api_key_headers_in_any_order() -> None:
    app, down = guarded(Rewrite())
    script = Script(body_messages(orjson.dumps(chat())))
    headers = [(b"x-api-key", b"sk-x"), (b"api-key", b"sk-api"), (b"authorization", b"Bearer sk-bearer")]
    await app(http_scope(headers=headers), script.receive, script.send)
    assert down.received[0].state.user_api_key_dict.api_key == hashlib.sha256(b"sk-bearer").hexdigest()
    script = Script(body_messages(orjson.dumps(chat())))
    await app(http_scope(headers=[(b"x-api-key", b"sk-x"), (b"api-key", b"sk-api")]), script.receive, script.send)
    assert down.received[1].state.user_api_key_dict.api_key == hashlib.sha256(b"sk-api").hexdigest()
