"""Hook discovery, binding by parameter name, ordering, return values and failures (docs/reference.md#construction,
#hooks, #errors)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal, Optional

import fastapi
import httpx
import litestar.exceptions
import pytest
import starlette.exceptions

from asgi_llm_guard import CallHook, DualCache, LLMHookMiddleware, UserAPIKeyAuth, get_formatted_prompt

from .apps import Downstream, chat, client, guarded
from .servers import serve

# -- handlers written exactly as LiteLLM's "Modify / Reject Incoming Requests" page shows them -------------------

CustomLogger = CallHook


class DocQuickStartHandler(CustomLogger):
    def __init__(self) -> None:
        pass

    async def async_pre_call_hook(
        self,
        user_api_key_dict: UserAPIKeyAuth,
        cache: DualCache,
        data: dict,
        call_type: Literal[
            "completion", "text_completion", "embeddings", "image_generation", "moderation", "audio_transcription"
        ],
    ):
        data["model"] = "my-new-model"
        return data

    async def async_post_call_failure_hook(
        self, request_data: dict, original_exception: Exception, user_api_key_dict: UserAPIKeyAuth
    ):
        pass

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: UserAPIKeyAuth, response):
        pass

    async def async_moderation_hook(
        self,
        data: dict,
        user_api_key_dict: UserAPIKeyAuth,
        call_type: Literal["completion", "embeddings", "image_generation", "moderation", "audio_transcription"],
    ):
        pass

    async def async_post_call_streaming_hook(self, user_api_key_dict: UserAPIKeyAuth, response: str):
        pass


class DocModerationHandler(CustomLogger):
    def __init__(self) -> None:
        pass

    async def async_log_stream_event(self, kwargs, response_obj, start_time, end_time):
        pass

    async def async_log_pre_api_call(self, model, messages, kwargs):
        pass

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        pass

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        pass

    async def async_pre_call_hook(
        self,
        user_api_key_dict: UserAPIKeyAuth,
        cache: DualCache,
        data: dict,
        call_type: Literal["completion", "embeddings"],
    ):
        data["model"] = "my-new-model"
        return data

    async def async_moderation_hook(self, data: dict):
        messages = data["messages"]
        if messages[0]["content"] == "hello world":
            raise fastapi.HTTPException(status_code=400, detail={"error": "Violated content safety policy"})


class DocRejectHandler(CustomLogger):
    def __init__(self) -> None:
        pass

    async def async_pre_call_hook(
        self,
        user_api_key_dict: UserAPIKeyAuth,
        cache: DualCache,
        data: dict,
        call_type: Literal[
            "completion", "text_completion", "embeddings", "image_generation", "moderation", "audio_transcription"
        ],
    ) -> Optional[dict | str | Exception]:  # noqa: UP045 - as the doc writes it
        formatted_prompt = get_formatted_prompt(data=data, call_type=call_type)
        if "Hello world" in formatted_prompt:
            return "This is an invalid response"
        return data


async def test_doc_quick_start_handler_rewrites_the_model() -> None:
    app, down = guarded(DocQuickStartHandler())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    assert down.received[0].json["model"] == "my-new-model"


async def test_doc_moderation_handler_short_signature_rejects() -> None:
    app, down = guarded(DocModerationHandler())
    async with client(app) as c:
        ok = await c.post("/v1/chat/completions", json=chat("good morning good sir"))
        blocked = await c.post("/v1/chat/completions", json=chat("hello world"))
    assert ok.status_code == 200
    assert blocked.status_code == 400
    assert blocked.json() == {
        "error": {
            "message": "Violated content safety policy",
            "type": "invalid_request_error",
            "param": None,
            "code": "400",
        }
    }
    assert blocked.headers["x-llm-guard-rejected"] == "moderation"


async def test_doc_reject_handler_answers_with_the_refusal() -> None:
    app, down = guarded(DocRejectHandler())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat("Hello world"))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "This is an invalid response"
    assert down.received == []


async def test_inherited_pre_call_hook_runs() -> None:
    class Base:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            data["from_base"] = True
            return data

    class Child(Base):
        pass

    app, down = guarded(Child())
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat())
    assert down.received[0].json["from_base"] is True


def test_call_hook_defaults_are_not_bound() -> None:
    class OnlyPre(CallHook):
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            return None

    middleware = LLMHookMiddleware(Downstream(), hooks=[OnlyPre()])
    assert len(middleware.hooks.pre_call) == 1
    assert not middleware.hooks.success and not middleware.hooks.failure and not middleware.hooks.streaming


async def test_hooks_bound_by_name_in_any_order_and_with_kwargs() -> None:
    seen: dict[str, Any] = {}

    class Reordered:
        async def async_pre_call_hook(self, call_type: str, data: dict, **kwargs: Any) -> None:
            seen["call_type"] = call_type
            seen["kwargs"] = sorted(kwargs)

        async def async_post_call_failure_hook(self, original_exception: Exception, user_api_key_dict: Any) -> None:
            seen["failure"] = original_exception

    app, _ = guarded(Reordered(), enforce_user_param=True)
    async with client(app) as c:
        await c.post("/v1/embeddings", json={"model": "e", "input": "x", "user": "u"})
        await c.post("/v1/embeddings", json={"model": "e", "input": "x"})
    assert seen["call_type"] == "embeddings"
    assert seen["kwargs"] == ["cache", "user_api_key_dict"]
    assert getattr(seen["failure"], "status_code", None) == 400


async def test_positional_parameters_with_other_names_get_litellm_order() -> None:
    class Positional:
        async def async_pre_call_hook(self, auth: Any, store: Any, body: dict, kind: str) -> dict:
            assert isinstance(auth, UserAPIKeyAuth) and isinstance(store, DualCache) and kind == "completion"
            return {**body, "seen": True}

    app, down = guarded(Positional())
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat())
    assert down.received[0].json["seen"] is True


async def test_named_parameters_keep_their_arguments_beside_other_names() -> None:
    seen: dict[str, Any] = {}

    class Mixed:
        async def async_pre_call_hook(self, data: dict, auth: Any, call_type: str, store: Any) -> None:
            seen["pre"] = (type(data), type(auth), call_type, type(store))

        async def async_post_call_failure_hook(
            self, user_api_key_dict: Any, original_exception: Exception, req: dict
        ) -> None:
            seen["failure"] = (type(user_api_key_dict), type(original_exception), req)

    app, _ = guarded(Mixed(), enforce_user_param=True)
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat(user="u"))
        await c.post("/v1/chat/completions", json=chat())
    # Named ones by name; the others take what is left, in LiteLLM's order.
    assert seen["pre"] == (dict, UserAPIKeyAuth, "completion", DualCache)
    auth_type, exception_type, request_data = seen["failure"]
    assert auth_type is UserAPIKeyAuth and issubclass(exception_type, Exception)
    assert request_data["messages"] == chat()["messages"]


async def test_star_args_hook_gets_litellm_order() -> None:
    seen: list[tuple[Any, ...]] = []

    class StarArgs:
        async def async_moderation_hook(self, *args: Any) -> None:
            seen.append(args)

    app, _ = guarded(StarArgs())
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat())
    [(data, user, call_type)] = seen
    assert isinstance(data, dict) and isinstance(user, UserAPIKeyAuth) and call_type == "completion"


def test_hook_method_set_on_a_call_hook_instance_is_bound() -> None:
    async def pre(user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> None:
        return None

    hook = CallHook()
    hook.async_pre_call_hook = pre  # type: ignore[method-assign]
    middleware = LLMHookMiddleware(Downstream(), hooks=[hook])
    assert [bound.method for bound in middleware.hooks.pre_call] == [pre]
    assert not middleware.hooks.moderation


async def test_sync_hook_methods_work_too() -> None:
    class Sync:
        def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> dict:
            return {**data, "sync": True}

    app, down = guarded(Sync())
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat())
    assert down.received[0].json["sync"] is True


async def test_pre_call_hooks_run_in_order_each_seeing_the_previous_data() -> None:
    class Append:
        def __init__(self, tag: str, replace: bool) -> None:
            self.tag, self.replace = tag, replace

        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            trail = [*data.get("trail", []), self.tag]
            if self.replace:
                return {**data, "trail": trail}
            data["trail"] = trail  # in-place edit, returns None
            return None

    app, down = guarded(Append("a", True), Append("b", False), Append("c", True))
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat())
    assert down.received[0].json["trail"] == ["a", "b", "c"]


async def test_returned_exception_is_treated_as_raised() -> None:
    class ReturnsError:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            return fastapi.HTTPException(status_code=403, detail="not for you")

    app, down = guarded(ReturnsError())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 403
    assert response.json()["error"] == {
        "message": "not for you",
        "type": "permission_error",
        "param": None,
        "code": "403",
    }
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    assert down.received == []


@pytest.mark.parametrize(
    ("exc", "status", "message"),
    [
        (fastapi.HTTPException(400, detail="plain detail"), 400, "plain detail"),
        (fastapi.HTTPException(400, detail={"error": "as error"}), 400, "as error"),
        (fastapi.HTTPException(400, detail={"error": {"message": "nested"}}), 400, "nested"),
        (fastapi.HTTPException(400, detail={"message": "as message"}), 400, "as message"),
        (fastapi.HTTPException(400, detail={"other": 1}), 400, '{"other":1}'),
        (fastapi.HTTPException(400, detail=""), 400, ""),
        (starlette.exceptions.HTTPException(401, detail="who are you"), 401, "who are you"),
        (litestar.exceptions.HTTPException(status_code=404, detail="gone"), 404, "gone"),
        (litestar.exceptions.NotAuthorizedException("no key"), 401, "no key"),
    ],
)
async def test_exceptions_with_status_code_give_that_status(exc: Exception, status: int, message: str) -> None:
    class Raises:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            raise exc

    app, _ = guarded(Raises())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == status
    assert response.json()["error"]["message"] == message
    assert response.json()["error"]["code"] == str(status)
    assert response.headers["content-type"] == "application/json"


async def test_rate_limit_exception_keeps_its_headers() -> None:
    class Limited:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            raise fastapi.HTTPException(429, detail="slow down", headers={"Retry-After": "7"})

    app, _ = guarded(Limited())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["type"] == "rate_limit_error"


async def test_exception_headers_cannot_change_how_the_error_body_is_framed() -> None:
    class Framing:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            raise fastapi.HTTPException(
                400,
                detail="no",
                headers={"Content-Type": "text/plain", "Content-Length": "1", "X-Reason": "policy"},
            )

    app, _ = guarded(Framing())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.headers.get_list("content-type") == ["application/json"]
    assert response.headers.get_list("content-length") == [str(len(response.content))]
    assert response.headers["x-reason"] == "policy"
    assert response.json()["error"]["message"] == "no"


@pytest.mark.parametrize("status", [204, 304])
async def test_exception_with_a_status_that_allows_no_body_gets_none(status: int) -> None:
    class NoContent:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            raise fastapi.HTTPException(status, headers={"X-Why": "policy"})

    app, down = guarded(NoContent())
    async with serve(app) as base, httpx.AsyncClient(base_url=base) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert (response.status_code, response.content) == (status, b"")
    assert "content-type" not in response.headers and response.headers["x-why"] == "policy"
    assert not down.received


async def test_exception_with_an_informational_status_is_a_hook_bug() -> None:
    class Informational:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            raise starlette.exceptions.HTTPException(101)

    app, _ = guarded(Informational())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "pre_call hook Informational failed"


class Broken:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        raise KeyError(f"bad prompt: {data['messages'][0]['content']}")


async def test_hook_bug_is_a_500_naming_the_hook_without_its_text(caplog: pytest.LogCaptureFixture) -> None:
    app, down = guarded(Broken())
    with caplog.at_level(logging.ERROR, logger="asgi_llm_guard"):
        async with client(app) as c:
            response = await c.post("/v1/chat/completions", json=chat("sk-secret-in-the-prompt"))
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "pre_call hook Broken failed",
            "type": "internal_server_error",
            "param": None,
            "code": "500",
        }
    }
    assert "sk-secret" not in response.text
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "pre_call hook Broken raised KeyError (message withheld)" in logged
    assert "Traceback (most recent call last)" in logged and "test_hooks.py" in logged
    assert "sk-secret" not in logged
    assert down.received == []


async def test_expose_hook_errors_shows_the_exception_text() -> None:
    app, _ = guarded(Broken(), expose_hook_errors=True)
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat("sk-secret-in-the-prompt"))
    assert response.status_code == 500
    assert "sk-secret-in-the-prompt" in response.json()["error"]["message"]


async def test_wrong_return_type_is_a_clear_500_and_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    class ReturnsInt:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            return 42

    app, _ = guarded(ReturnsInt())
    with caplog.at_level(logging.ERROR, logger="asgi_llm_guard"):
        async with client(app) as c:
            response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "pre_call hook ReturnsInt failed"
    assert any("ReturnsInt returned int" in record.getMessage() for record in caplog.records)


class Hangs:
    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        await asyncio.sleep(10)


async def test_hook_past_its_timeout_fails_closed_with_503() -> None:
    app, down = guarded(Hangs(), hook_timeout=0.05)
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "timeout_error"
    assert response.json()["error"]["message"] == "pre_call hook Hangs timed out after 0.05s"
    assert response.headers["x-llm-guard-rejected"] == "pre_call"
    assert down.received == []


async def test_fail_open_hook_lets_the_request_through_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    app, down = guarded(Hangs(fail_open=True, timeout=0.05))
    with caplog.at_level(logging.WARNING, logger="asgi_llm_guard"):
        async with client(app) as c:
            response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    assert len(down.received) == 1
    assert any("timed out" in record.getMessage() for record in caplog.records)


async def test_hook_timeout_attribute_overrides_the_middleware_default() -> None:
    app, _ = guarded(Hangs(timeout=0.05), hook_timeout=30)
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 503


async def test_same_identity_object_reaches_every_hook_and_the_app() -> None:
    seen: list[Any] = []

    class Notes:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            user_api_key_dict.metadata["note"] = "kept"
            seen.append(user_api_key_dict)

        async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: str) -> None:
            seen.append(user_api_key_dict)

        async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> None:
            seen.append(user_api_key_dict)
            assert data["model"] == "gpt-test"

    app, down = guarded(Notes())
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer sk-abc"})
    assert response.status_code == 200
    assert len(seen) == 3 and seen[0] is seen[1] is seen[2]
    assert seen[0].metadata == {"note": "kept"}
    state = down.received[0].state
    assert state.user_api_key_dict is seen[0]
    assert state.call_type == "completion"
    assert state.data == down.received[0].json
    assert "note" not in down.received[0].body.decode()


async def test_cache_is_shared_across_requests() -> None:
    class Counter:
        async def async_pre_call_hook(
            self, user_api_key_dict: Any, cache: DualCache, data: dict, call_type: str
        ) -> Any:
            count = await cache.async_increment_cache("requests", 1)
            if count > 2:
                return "too many"
            return None

    app, down = guarded(Counter())
    async with client(app) as c:
        answers = [await c.post("/v1/chat/completions", json=chat()) for _ in range(3)]
    assert len(down.received) == 2
    assert answers[2].json()["choices"][0]["message"]["content"] == "too many"
