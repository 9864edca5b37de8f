"""The Anthropic Messages route through a real uvicorn server, spoken to by the npm ``@anthropic-ai/sdk`` (run with
the machine's node; ``./scripts/setup`` installs the SDK into ``tests/node`` from its lockfile).

The same guarded app and cases as ``test_anthropic_sdk.py``: refusals parse as normal messages, errors before a
stream raise the SDK's ``APIError`` subclass for their status, and errors during a stream raise its stream
``APIError`` holding the error envelope. ``tests/node/anthropic_cases.mjs`` runs a list of cases in one node
process and prints what the SDK made of each.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

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
    SYSTEM,
    Server,
    guarded_app,
    request,
)
from tests.servers import serve

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
HOWS = ["create", "create-stream", "stream-helper"]
STREAMED = HOWS[1:]
# The npm SDK's class for each status (its STATUS_ERROR_CLASSES).
NODE_ERRORS = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
               404: "NotFoundError", 413: "ContentTooLargeError", 429: "RateLimitError",
               500: "InternalServerError", 503: "ServiceUnavailableError", 529: "OverloadedError"}


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    app, model = guarded_app()
    async with serve(app) as base_url:
        yield Server(base_url, model)


async def run_node(server: Server, cases: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """What the npm SDK made of each (how, params) case."""
    node = shutil.which("node")
    assert node is not None, "node is not installed: run ./scripts/setup"
    assert (NODE_DIR / "node_modules" / "@anthropic-ai" / "sdk").is_dir(), "run ./scripts/setup (npm ci)"
    process = await asyncio.create_subprocess_exec(
        node, "anthropic_cases.mjs", server.base_url, cwd=NODE_DIR,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    payload = json.dumps([{"how": how, "params": params} for how, params in cases]).encode()
    stdout, stderr = await asyncio.wait_for(process.communicate(payload), timeout=90)
    assert process.returncode == 0, stderr.decode()
    outcomes: list[dict[str, Any]] = json.loads(stdout)
    assert len(outcomes) == len(cases)
    return outcomes


async def test_answers_and_per_chunk_edits(server: Server) -> None:
    cases = [(how, request("good morning")) for how in HOWS] + [(how, request("shout")) for how in STREAMED]
    outcomes = await run_node(server, cases)

    for (how, _), outcome in zip(cases, outcomes, strict=True):
        expected = [ANSWER.upper()] if _["messages"][0]["content"] == "shout" else [ANSWER]
        assert "error" not in outcome, (how, outcome)
        assert outcome["texts"] == expected, how
        assert outcome["stop_reason"] == "end_turn"
    received = [{k: v for k, v in body.items() if k != "stream"} for body in server.model.received]
    assert received == [{**params, "system": SYSTEM} for _, params in cases]


async def test_every_refusal_parses_as_a_normal_message(server: Server) -> None:
    cases = [
        *((how, request("refuse"), [REFUSED_PRE_CALL]) for how in HOWS),
        *((how, request("moderate"), [REFUSED_MODERATION]) for how in HOWS),
        ("create", request("refuse after"), [REFUSED_POST_CALL]),
        *((how, request("refuse at start"), [REFUSED_STREAMING]) for how in STREAMED),
        *((how, request("refuse mid-stream"), [DELTAS[0], REFUSED_STREAMING]) for how in STREAMED),
        # a text block, then a tool_use block refused midway: closed, and the refusal in a third block
        *((how, request("refuse in a tool block"), [DELTAS[0], REFUSED_STREAMING]) for how in STREAMED),
    ]
    outcomes = await run_node(server, [(how, params) for how, params, _ in cases])

    for (how, params, texts), outcome in zip(cases, outcomes, strict=True):
        where = (how, params["messages"][0]["content"])
        assert "error" not in outcome, (where, outcome)
        assert outcome["texts"] == texts, where
        assert outcome["stop_reason"] == "end_turn", where
        assert outcome["model"] == MODEL, where
        if how != "create":
            assert outcome["event_types"].count("message_start") == 1, where
            assert outcome["event_types"][-1] == "message_stop", where


async def test_every_error_before_a_stream_raises_the_sdk_error_for_its_status(server: Server) -> None:
    cases: list[tuple[str, dict[str, Any], int, str | None]] = [
        *((how, request(f"status {status}"), status, f"Stopped with {status}.")
          for how in HOWS for status in (400, 401, 403, 404, 429, 500, 529)),
        *((how, request("bug"), 500, "pre_call hook Scenario failed") for how in HOWS),
        *((how, request("slow"), 503, None) for how in HOWS),
        *((how, request("good morning", metadata={}), 400, None) for how in HOWS),
        *((how, request("x" * MAX_BODY), 413, None) for how in HOWS),
        *((how, request("good morning", messages="not a list"), 400, None) for how in HOWS),
        *((how, request("good morning", system=42), 400, None) for how in HOWS),
        *((how, request("overloaded"), 529, "Overloaded") for how in HOWS),  # the model's own error, unchanged
    ]
    outcomes = await run_node(server, [(how, params) for how, params, _, _ in cases])

    for (how, params, status, message), outcome in zip(cases, outcomes, strict=True):
        where = (how, str(params["messages"])[:40], status)
        assert "error" in outcome, (where, outcome)
        error = outcome["error"]
        assert error["is_api_error"], where
        assert (error["class"], error["status"]) == (NODE_ERRORS[status], status), (where, error)
        assert error["body"]["type"] == "error", where
        assert error["type"] == error["body"]["error"]["type"] == ERROR_TYPES[status], (where, error)
        if message is not None:
            assert error["body"]["error"]["message"] == message, where
            from_the_model = params["messages"][0]["content"] == "overloaded"
            assert error["rejected"] == (None if from_the_model else "pre_call"), where
        if status == 429:
            assert error["retry_after"] == "7", where
        assert outcome["event_types"] == [], where
    assert [body["messages"][0]["content"] for body in server.model.received] == ["overloaded"] * len(HOWS)


async def test_every_error_during_a_stream_raises_the_sdk_stream_error(server: Server) -> None:
    cases = [
        *((how, request(f"status {status} mid-stream"), status) for how in STREAMED for status in (400, 429, 500)),
        *((how, request("slow mid-stream"), 503) for how in STREAMED),
        *((how, request("break mid-stream"), 500) for how in STREAMED),  # the model raised after its start
    ]
    outcomes = await run_node(server, [(how, params) for how, params, _ in cases])

    for (how, params, status), outcome in zip(cases, outcomes, strict=True):
        where = (how, params["messages"][0]["content"])
        assert "error" in outcome, (where, outcome)
        error = outcome["error"]
        # The response started with 200: the SDK raises its base APIError, with no status, from the error event.
        assert (error["class"], error["status"], error["is_api_error"]) == ("APIError", None, True), where
        assert error["body"]["type"] == "error", where
        assert error["type"] == ERROR_TYPES[status], where
        if status not in (500, 503) or "status" in where[1]:
            assert error["body"]["error"]["message"] == f"Stopped with {status}.", where
        assert outcome["event_types"].count("message_start") == 1, where
        assert "message_stop" not in outcome["event_types"], where
