"""The guarded Anthropic Messages app both SDK test modules speak to (``test_anthropic_sdk.py`` with the Python
SDK, ``test_anthropic_node_sdk.py`` with the npm one): a downstream app answering as Anthropic does, behind the
middleware with a ``Scenario`` hook whose behaviour the last user message chooses."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import anthropic
from starlette.exceptions import HTTPException

from asgi_llm_guard import CallHook, LLMHookMiddleware, RejectRequest

MODEL = "claude-test"
USER = "end-user-1"
SYSTEM = "Be kind."  # what the pre-call hook adds: the app must receive it
DELTAS = ["Hello", " there", ",", " friend."]
ANSWER = "".join(DELTAS)
HOOK_TIMEOUT = 1.0  # a slow hook sleeps far longer than this; a fast one takes microseconds
MAX_BODY = 64 * 1024

REFUSED_PRE_CALL = "Refused before the model."
REFUSED_MODERATION = "Refused by moderation."
REFUSED_POST_CALL = "Refused after the model."
REFUSED_STREAMING = "Refused while streaming."
REWRITTEN = "Rewritten by the post-call hook."

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               503: "api_error", 529: "overloaded_error"}
SDK_ERRORS: dict[int, type[anthropic.APIStatusError]] = {
    400: anthropic.BadRequestError, 401: anthropic.AuthenticationError, 403: anthropic.PermissionDeniedError,
    404: anthropic.NotFoundError, 413: anthropic.ContentTooLargeError, 429: anthropic.RateLimitError,
    500: anthropic.InternalServerError, 503: anthropic.ServiceUnavailableError, 529: anthropic.OverloadedError,
}


def prompt_of(data: dict[str, Any]) -> str:
    content = data["messages"][-1]["content"]
    return content if isinstance(content, str) else " ".join(block["text"] for block in content)


class Scenario(CallHook):
    """Does what the last user message says:

    - ``refuse``: the pre-call hook returns a refusal string;
    - ``moderate``: the moderation hook raises ``RejectRequest``;
    - ``refuse after``: the post-call success hook raises ``RejectRequest`` (a JSON answer only);
    - ``refuse at start`` / ``refuse mid-stream``: the per-chunk hook raises ``RejectRequest`` on
      ``message_start`` (nothing sent yet) / on the second text delta (the first went out);
    - ``status N`` / ``status N mid-stream``: an ``HTTPException(N)`` (429 with ``Retry-After``) from the pre-call
      hook / the per-chunk hook on the second text delta;
    - ``slow`` / ``slow mid-stream``: the pre-call hook / the per-chunk hook on the second delta outlasts
      ``hook_timeout``;
    - ``bug``: the pre-call hook raises ``ValueError``;
    - ``refuse on message_delta`` / ``refuse on message_stop``: the per-chunk hook refuses on that event, when
      the text block is already closed;
    - ``rewrite after``: the post-call success hook replaces the answer's content;
    - ``status 409``: the pre-call hook's 409 is replaced by the failure hook's 403;
    - ``shout``: the per-chunk hook upper-cases every text delta;
    - ``refuse in a tool block``: the model streams a text block then a tool_use block, and the per-chunk hook
      refuses on the tool input's first non-empty JSON piece;
    - ``break mid-stream`` / ``overloaded``: the model raises after its first text delta / answers 529;
    - anything else: the request goes through, with a system prompt added.
    """

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> Any:
        assert call_type == "anthropic_messages"
        prompt = prompt_of(data)
        user_api_key_dict.metadata["prompt"] = prompt  # request-scoped: the per-chunk hook sees no request data
        words = prompt.split()
        if prompt == "refuse":
            return REFUSED_PRE_CALL
        if words[0] == "status" and len(words) == 2:
            raise status_error(int(words[1]))
        if prompt == "slow":
            await asyncio.sleep(30)
        if prompt == "bug":
            raise ValueError("a bug in the hook")
        data["system"] = SYSTEM
        return data

    async def async_moderation_hook(self, data: dict[str, Any], user_api_key_dict: Any, call_type: str) -> None:
        if prompt_of(data) == "moderate":
            raise RejectRequest(REFUSED_MODERATION)

    async def async_post_call_success_hook(self, data: dict[str, Any], user_api_key_dict: Any, response: Any) -> Any:
        if prompt_of(data) == "refuse after":
            raise RejectRequest(REFUSED_POST_CALL)
        if prompt_of(data) == "rewrite after":
            assert response["type"] == "message"  # the app's Anthropic message, parsed
            return {**response, "content": [{"type": "text", "text": REWRITTEN}]}
        return None

    async def async_post_call_failure_hook(
        self, request_data: dict[str, Any], original_exception: Exception, user_api_key_dict: Any
    ) -> Any:
        if request_data and prompt_of(request_data) == "status 409":
            return HTTPException(403, detail="Replaced by the failure hook.")
        return None

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: Any) -> Any:
        notes = user_api_key_dict.metadata
        prompt = notes["prompt"]
        if response.get("type") == "message_start" and prompt == "refuse at start":
            raise RejectRequest(REFUSED_STREAMING)
        if prompt == f"refuse on {response.get('type')}":  # message_delta, message_stop: no block is open
            raise RejectRequest(REFUSED_STREAMING)
        if response.get("type") != "content_block_delta":
            return None
        if prompt == "refuse in a tool block" and response["delta"].get("partial_json"):
            raise RejectRequest(REFUSED_STREAMING)
        notes["deltas"] = notes.get("deltas", 0) + 1
        if notes["deltas"] == 2:
            if prompt == "refuse mid-stream":
                raise RejectRequest(REFUSED_STREAMING)
            if prompt.startswith("status ") and prompt.endswith(" mid-stream"):
                raise status_error(int(prompt.split()[1]))
            if prompt == "slow mid-stream":
                await asyncio.sleep(30)
        if prompt == "shout":
            delta = response["delta"]
            return {**response, "delta": {**delta, "text": delta["text"].upper()}}
        return None


def status_error(status: int) -> HTTPException:
    headers = {"Retry-After": "7"} if status == 429 else None
    return HTTPException(status, detail=f"Stopped with {status}.", headers=headers)


@dataclass
class Model:
    """The downstream app: answers ``/v1/messages`` with ``ANSWER`` as Anthropic does, and records each body."""

    received: list[dict[str, Any]] = field(default_factory=list)
    guards: list[tuple[str, str | None]] = field(default_factory=list)  # (call type, end user) the middleware left

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        data = json.loads(body)
        self.received.append(data)
        guard = scope.get("state", {}).get("llm_guard")
        if guard is not None:
            self.guards.append((guard.call_type, guard.user_api_key_dict.end_user_id))
        if scope["path"].endswith(("/count_tokens", "/batches")):  # Anthropic's side routes: never guarded
            answer = {"input_tokens": 7} if scope["path"].endswith("/count_tokens") else {
                "id": "msgbatch_1", "type": "message_batch", "processing_status": "in_progress"}
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
            return
        message = {"id": "msg_down", "type": "message", "role": "assistant", "model": data["model"],
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 3, "output_tokens": 1}}
        prompt = prompt_of(data)
        if prompt == "overloaded":  # the model's own error: it must reach the client as it is
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            await send({"type": "http.response.start", "status": 529,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"3")]})
            await send({"type": "http.response.body", "body": json.dumps(error).encode()})
            return
        if data.get("stream") is not True:
            answer = {**message, "content": [{"type": "text", "text": ANSWER}], "stop_reason": "end_turn",
                      "usage": {"input_tokens": 3, "output_tokens": 4}}
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        events = tool_stream_events(message) if prompt == "refuse in a tool block" else stream_events(message)
        for number, event in enumerate(events):
            if prompt == "break mid-stream" and number == 4:  # after the first text delta
                raise RuntimeError("the model broke")
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def stream_events(message: dict[str, Any]) -> list[bytes]:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
          for text in DELTAS),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": 4}},
        {"type": "message_stop"},
    ]
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


def tool_stream_events(message: dict[str, Any]) -> list[bytes]:
    """A text block, then a tool_use block whose input arrives as JSON pieces."""
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": DELTAS[0]}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


class PreCallOnly(CallHook):
    """No streaming hook: the middleware passes streams through unparsed."""

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> Any:
        data["system"] = SYSTEM
        return data


def guarded_app(hook: Any = None) -> tuple[Any, Model]:
    """The model behind the middleware with ``hook`` (a ``Scenario`` by default)."""
    model = Model()
    app = LLMHookMiddleware(model, hooks=[hook or Scenario()], enforce_user_param=True, hook_timeout=HOOK_TIMEOUT,
                            max_body_bytes=MAX_BODY)
    return app, model


@dataclass
class Server:
    base_url: str
    model: Model


def request(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "metadata": {"user_id": USER},
            "messages": [{"role": "user", "content": prompt}], **extra}
