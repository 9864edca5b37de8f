"""The LiteLLM adapter's construction-time rules and request fields (docs/litellm.md), in process with real
LiteLLM classes: which methods count, what is not forwarded, LiteLLM identities from ``auth``, and that
``litellm`` is imported only when one of its hooks is configured."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from asgi_llm_guard import LLMHookMiddleware, UserAPIKeyAuth
from asgi_llm_guard.litellm_adapter import LiteLLMHook, from_litellm_identity, is_litellm_hook, to_litellm_identity
from tests.apps import Downstream, chat, client
from tests.litellm_support import load_litellm

litellm = load_litellm()
from litellm.integrations.custom_logger import CustomLogger  # noqa: E402
from litellm.proxy._types import UserAPIKeyAuth as LiteLLMUserAPIKeyAuth  # noqa: E402


class PreCallOnly(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, ...]] = []

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        self.seen.append((type(user_api_key_dict).__name__, call_type, user_api_key_dict.user_rpm_limit))
        data.setdefault("metadata", {})["pii_tokens"] = {"<PERSON>": "Jane"}  # as Presidio notes its token map
        data["litellm_call_id"] = "abc"
        return data


def test_only_overridden_methods_are_bound() -> None:
    app = LLMHookMiddleware(Downstream(), hooks=[PreCallOnly()])
    assert len(app.hooks.pre_call) == 1
    assert app.hooks.pre_call[0].name == "PreCallOnly"
    # CustomLogger's inherited no-op response hooks cost nothing: responses pass as bytes, streams unparsed.
    assert not (app.hooks.success or app.hooks.streaming or app.hooks.streaming_iterator or app.hooks.failure)
    assert app.plain_responses


def test_detection_needs_no_import() -> None:
    assert is_litellm_hook(PreCallOnly())
    assert not is_litellm_hook(object())


def test_a_class_that_needs_the_proxy_fails_at_construction() -> None:
    from litellm.proxy.hooks.dynamic_rate_limiter import _PROXY_DynamicRateLimitHandler

    hook = _PROXY_DynamicRateLimitHandler.__new__(_PROXY_DynamicRateLimitHandler)
    with pytest.raises(TypeError, match="needs the LiteLLM proxy itself"):
        LLMHookMiddleware(Downstream(), hooks=[hook])


def test_a_logger_with_no_hook_method_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"hooks\[0\] \(CustomLogger\) has none of the hook methods"):
        LLMHookMiddleware(Downstream(), hooks=[CustomLogger()])


async def test_hooks_get_the_proxy_call_type_and_added_fields_are_not_forwarded() -> None:
    hook = PreCallOnly()
    app = LLMHookMiddleware(Downstream(), hooks=[hook])
    down = app.app
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat(metadata={"trace": "t-1"}, guardrails=["x"]))
    assert response.status_code == 200
    assert hook.seen == [("UserAPIKeyAuth", "acompletion", None)]
    received = down.received[0].json
    assert received["metadata"] == {"trace": "t-1"}  # the client's own metadata, not the hook's notes
    assert "guardrails" not in received and "litellm_call_id" not in received
    assert "_llm_guard_litellm" not in received
    assert down.received[0].state.data == received  # the app's view of the request is what it received


async def test_added_metadata_is_dropped_when_the_client_sent_none() -> None:
    app = LLMHookMiddleware(Downstream(), hooks=[PreCallOnly()])
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat())
    assert "metadata" not in app.app.received[0].json


async def test_auth_may_return_litellm_identity() -> None:
    async def auth(scope: Any) -> Any:
        return LiteLLMUserAPIKeyAuth(api_key="sk-raw", user_id="u-1", team_id="t-1", user_rpm_limit=7)

    hook = PreCallOnly()
    app = LLMHookMiddleware(Downstream(), hooks=[hook], auth=auth)
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    assert hook.seen == [("UserAPIKeyAuth", "acompletion", 7)]
    user = app.app.received[0].state.user_api_key_dict
    assert isinstance(user, UserAPIKeyAuth)
    assert (user.user_id, user.team_id, user.user_rpm_limit) == ("u-1", "t-1", 7)
    assert user.api_key is not None and user.api_key != "sk-raw"  # hashed, as LiteLLM's token is


def test_identity_converts_both_ways() -> None:
    ours = from_litellm_identity(LiteLLMUserAPIKeyAuth(token="h" * 64, team_id="t", max_parallel_requests=2))
    assert (ours.api_key, ours.team_id, ours.max_parallel_requests) == ("h" * 64, "t", 2)
    theirs = to_litellm_identity(UserAPIKeyAuth(api_key="h" * 64, user_id="u", tpm_limit=10))
    assert isinstance(theirs, LiteLLMUserAPIKeyAuth)
    assert (theirs.token, theirs.user_id, theirs.tpm_limit) == ("h" * 64, "u", 10)


def test_our_identity_has_litellm_fields_defaulted() -> None:
    user = UserAPIKeyAuth(user_id="u", team_rpm_limit=3)
    assert user.allowed_cache_controls == [] and user.permissions == {} and user.model_max_budget == {}
    assert user.parent_otel_span is None and user.user_tpm_limit is None and user.team_rpm_limit == 3
    assert UserAPIKeyAuth().allowed_cache_controls is not UserAPIKeyAuth().allowed_cache_controls
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        UserAPIKeyAuth(nope=1)


def test_wrapper_is_named_after_the_hook() -> None:
    assert repr(LiteLLMHook(PreCallOnly())).startswith("LiteLLMHook(")


SCRIPT = """
import sys
from asgi_llm_guard import LLMHookMiddleware, CallHook
class Hook(CallHook):
    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        return None
async def app(scope, receive, send):
    pass
LLMHookMiddleware(app, hooks=[Hook()])
print("litellm" in sys.modules)
"""


def test_litellm_is_not_imported_without_a_litellm_hook() -> None:
    # Regression guard: importing litellm takes seconds and much memory; only its hooks may cause it.
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


class NeedsProxyState(CustomLogger):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.seen: list[Any] = []

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        import litellm.proxy.proxy_server as proxy_server

        self.seen.append(getattr(proxy_server, self.name))
        return None


async def test_the_proxys_router_and_database_read_as_absent() -> None:
    hook = NeedsProxyState("llm_router")
    app = LLMHookMiddleware(Downstream(), hooks=[hook])
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200 and hook.seen == [None]


async def test_a_hook_needing_more_of_the_proxy_fails_closed() -> None:
    # Regression guard: a proxy-only name must not read as None and let the request through unchecked.
    app = LLMHookMiddleware(Downstream(), hooks=[NeedsProxyState("spend_counter_store")])
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "pre_call hook NeedsProxyState failed"
    assert app.app.received == []


def test_a_method_the_middleware_never_calls_is_reported_at_construction(caplog: pytest.LogCaptureFixture) -> None:
    class WithHeaders(PreCallOnly):
        async def async_post_call_response_headers_hook(self, *args: Any, **kwargs: Any) -> Any:
            return {"x-mine": "1"}

    with caplog.at_level("WARNING", logger="asgi_llm_guard"):
        LLMHookMiddleware(Downstream(), hooks=[WithHeaders()])
    assert "WithHeaders.async_post_call_response_headers_hook is not called under LLMHookMiddleware" in caplog.text
