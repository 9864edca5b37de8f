"""Options are checked when the middleware is built, with messages that say what to pass instead
(docs/reference.md#construction)."""

from __future__ import annotations

from typing import Any

import pytest

from asgi_llm_guard import CallHook, DualCache, LLMHookMiddleware

from .apps import Downstream, chat, client


class Hook(CallHook):
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        return None


def build(**options: Any) -> LLMHookMiddleware:
    return LLMHookMiddleware(Downstream(), **options)


def test_import_string_that_does_not_resolve_names_it() -> None:
    with pytest.raises(ValueError, match="no_such_module.handler"):
        build(hooks=["no_such_module.handler"])


def test_import_string_with_missing_attribute_names_it() -> None:
    with pytest.raises(ValueError, match="tests.hookmods.missing"):
        build(hooks=["tests.hookmods.missing"])


def test_class_instead_of_instance_says_to_pass_an_instance() -> None:
    with pytest.raises(TypeError, match=r"pass an instance, not the class: hooks=\[Hook\(\)\]"):
        build(hooks=[Hook])


def test_object_without_hook_methods_is_rejected() -> None:
    with pytest.raises(TypeError, match="none of the hook methods"):
        build(hooks=[object()])
    with pytest.raises(TypeError, match="none of the hook methods"):
        build(hooks=["tests.hookmods.not_a_hook"])


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"enforce_user_param": "yes"}, TypeError),
        ({"expose_hook_errors": 1}, TypeError),
        ({"max_body_bytes": "10MB"}, TypeError),
        ({"max_body_bytes": 0}, TypeError),
        ({"hook_timeout": "5"}, TypeError),
        ({"hook_timeout": -1}, TypeError),
        ({"auth": "my_auth"}, TypeError),
        ({"cache": {}}, TypeError),
        ({"moderation": "sometimes"}, ValueError),
        ({"moderation": True}, TypeError),
        ({"routes": ["/chat/completions"]}, TypeError),
        ({"routes": {"/custom": "chat"}}, ValueError),
        ({"hooks": Hook()}, TypeError),
        ({"hooks": "tests.hookmods.proxy_handler_instance"}, TypeError),
    ],
)
def test_wrong_option_fails_at_construction(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        build(**options)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        build(enforce_user=True)


def test_hook_timeout_attribute_is_validated() -> None:
    hook = Hook()
    hook.timeout = "soon"  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="timeout"):
        build(hooks=[hook])


def test_hook_whose_parameters_cannot_be_filled_is_rejected() -> None:
    class Odd:
        async def async_pre_call_hook(self, a: Any, b: Any, c: Any, d: Any, e: Any) -> None:
            return None

    with pytest.raises(TypeError, match="cannot fill"):
        build(hooks=[Odd()])


def test_options_accept_their_documented_forms() -> None:
    middleware = build(
        hooks=[Hook(), "tests.hookmods.proxy_handler_instance", "tests.hookmods:proxy_handler_instance"],
        enforce_user_param=True,
        routes={"/custom/{tenant}/chat": "completion", "/embeddings": None},
        max_body_bytes=1024,
        cache=DualCache(max_size=10),
        hook_timeout=2.5,
        moderation="before",
    )
    assert len(middleware.hooks.pre_call) == 3


async def test_import_string_hooks_run_in_both_forms() -> None:
    down = Downstream()
    app = LLMHookMiddleware(down, hooks=["tests.hookmods:proxy_handler_instance"])
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    assert down.received[0].json["via_import_string"] is True
