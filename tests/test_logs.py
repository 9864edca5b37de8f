"""Operators' logs: a broken app's or hook's exception type is logged at ERROR with its frames, its text at DEBUG
only (docs/observability.md#logs), so nothing at INFO or above holds a prompt, a key or exception text."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from asgi_llm_guard import LLMHookMiddleware
from tests.apps import chat, client

PROMPT = "my-private-prompt-5521"


async def app_losing_its_upstream(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    raise httpx.RemoteProtocolError(f"peer closed connection while answering {PROMPT}")


class QuotingHook:
    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        raise KeyError(f"no route for {data['messages'][0]['content']}")


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("asgi_llm_guard")]


async def test_at_info_the_app_failure_is_logged_without_its_text(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="asgi_llm_guard")
    async with client(LLMHookMiddleware(app_losing_its_upstream)) as http:
        response = await http.post("/v1/chat/completions", json=chat(PROMPT))
    assert response.status_code == 502  # an HTTP client's error: the app's upstream failed, not the client
    (record,) = ours(caplog)
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("the downstream app raised RemoteProtocolError (message withheld)")
    assert "app_losing_its_upstream" in record.getMessage()  # the frames, to find the bug
    assert PROMPT not in record.getMessage()


async def test_at_debug_the_operator_sees_why_the_app_failed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="asgi_llm_guard")
    async with client(LLMHookMiddleware(app_losing_its_upstream)) as http:
        await http.post("/v1/chat/completions", json=chat(PROMPT))
    debug = [r.getMessage() for r in ours(caplog) if r.levelno == logging.DEBUG]
    assert debug == [f"the downstream app raised RemoteProtocolError: peer closed connection while answering {PROMPT}"]
    assert all(PROMPT not in r.getMessage() for r in ours(caplog) if r.levelno >= logging.INFO)


async def test_a_hooks_exception_text_is_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="asgi_llm_guard")
    async with client(LLMHookMiddleware(app_losing_its_upstream, hooks=[QuotingHook()])) as http:
        response = await http.post("/v1/chat/completions", json=chat(PROMPT))
    assert response.json()["error"]["message"] == "pre_call hook QuotingHook failed"
    records = ours(caplog)
    assert [r.levelno for r in records] == [logging.ERROR, logging.DEBUG]
    assert "pre_call hook QuotingHook raised KeyError (message withheld)" in records[0].getMessage()
    assert records[1].getMessage() == f"pre_call hook QuotingHook raised KeyError: 'no route for {PROMPT}'"
