"""Checks shared by the adversarial tests: legal ASGI response message sequences, leftover tasks, failure hooks."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson


def assert_legal(sent: list[dict[str, Any]], *, complete: bool = True) -> None:
    """``sent`` is a legal ASGI HTTP response: exactly one ``http.response.start`` first (an int status, a list of
    ``(bytes, bytes)`` headers with lower-case names and no line breaks), then ``http.response.body`` messages of
    bytes, the last one (and only it) with ``more_body`` false, nothing after it.

    ``complete=False`` is for a client that went away: an empty list (the server just closes) or a legal prefix
    (the start and some bodies, possibly without the final one) is accepted too.
    """
    if not complete and not sent:
        return
    assert sent, "nothing was sent"
    kinds = [message["type"] for message in sent]
    assert kinds[0] == "http.response.start", kinds
    assert kinds.count("http.response.start") == 1, kinds
    assert all(kind == "http.response.body" for kind in kinds[1:]), kinds
    start = sent[0]
    status = start["status"]
    assert isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599, status
    for header in start.get("headers", []):
        name, value = header
        assert isinstance(name, bytes) and isinstance(value, bytes), header
        assert name == name.lower(), header
        assert b"\r" not in name + value and b"\n" not in name + value and b"\x00" not in name + value, header
    finals = [index for index, message in enumerate(sent) if message["type"] == "http.response.body"
              and not message.get("more_body", False)]
    for message in sent[1:]:
        assert isinstance(message.get("body", b""), bytes), message
    if complete:
        assert finals == [len(sent) - 1], f"final body at {finals} of {kinds}"
    else:
        assert finals in ([], [len(sent) - 1]), f"final body at {finals} of {kinds}"


def response_body(sent: list[dict[str, Any]]) -> bytes:
    return b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")


def response_headers(sent: list[dict[str, Any]]) -> dict[bytes, bytes]:
    return {name: value for name, value in sent[0].get("headers", [])}


def assert_openai_error(body: bytes, status: int) -> dict[str, Any]:
    """``body`` is the middleware's error envelope for ``status`` (docs/reference.md#errors); returns its ``error``
    object."""
    parsed = orjson.loads(body)
    assert set(parsed) == {"error"}, parsed
    error = parsed["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["code"] == str(status), error
    return dict(error)


async def settle() -> None:
    """Let callbacks scheduled by finished tasks run, so ``asyncio.all_tasks()`` is accurate."""
    for _ in range(3):
        await asyncio.sleep(0)


async def assert_no_new_tasks(before: set[asyncio.Task[Any]]) -> None:
    await settle()
    left = {task for task in asyncio.all_tasks() - before if not task.done()}
    assert left == set(), f"tasks left behind: {left}"


class Failures:
    """A failure hook that records what it was called with."""

    def __init__(self) -> None:
        self.exceptions: list[BaseException] = []
        self.request_data: list[Any] = []

    async def async_post_call_failure_hook(
        self, request_data: Any, original_exception: BaseException, user_api_key_dict: Any
    ) -> None:
        self.exceptions.append(original_exception)
        self.request_data.append(request_data)
