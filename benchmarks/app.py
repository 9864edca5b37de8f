"""The downstream app every benchmark layer uses, and the variants built around it.

The bare app is a small pure-Starlette OpenAI-compatible service:

- ``POST /v1/chat/completions``: reads and parses the JSON body like a real handler, answers a fixed,
  realistic chat completion; with ``"stream": true`` it streams ``chunks`` SSE chunks (default 100: a role
  chunk, content chunks, a finish chunk) and ``data: [DONE]``, generated lazily, one ASGI message per chunk.
  The count comes from the query (``?chunks=N``) or the body (``"bench_chunks": N``).
- ``POST /v1/messages``: Anthropic's Messages API; streamed, ``chunks`` events (default 100: ``message_start``,
  ``content_block_start``, text deltas, ``content_block_stop``, ``message_delta``, ``message_stop``), else a fixed
  message.
- ``GET /health`` and ``POST /v1/other``: routes the guard does not guard.

Variants, selectable by name (``build("guarded_pre")``), as module attributes for uvicorn
(``uvicorn benchmarks.app:guarded_pre``), or through ``BENCH_VARIANT`` (``uvicorn benchmarks.app:app``):

- ``bare``: the app alone
- ``noop``: the app behind a no-op pure ASGI middleware, the floor any middleware pays
- ``guarded_pre``: ``LLMHookMiddleware`` with one trivial ``async_pre_call_hook``
- ``floor``: :class:`FloorGuard`, the bare minimum a body-rewriting guard does, with the same hook (a reference,
  not a product: no checks, no response tracking, no errors)
- ``guarded_pre_post``: the same plus a trivial ``async_post_call_success_hook``
- ``guarded_stream``: ``LLMHookMiddleware`` with a trivial per-chunk ``async_post_call_streaming_hook``
- ``guarded_refuse``: a pre-call hook that refuses every request (no downstream call)
- ``moderation``: a moderation hook sleeping ``BENCH_MODERATION_MS`` raced against the app sleeping
  ``BENCH_APP_MS`` (``make_moderation(x_ms, y_ms)`` in process)
- ``guardrail_pre``: a ``pre_call`` ``CustomGuardrail`` checking every request text for a word
- ``hook_check``: the same check written as an ``async_pre_call_hook`` over ``request_texts``
- ``guardrail_mask``: a ``post_call`` ``CustomGuardrail`` masking a word in answers (streams through the hold-back
  window; ``MaskGuardrail.calls`` counts its calls)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from asgi_llm_guard import CustomGuardrail, LLMHookMiddleware, RejectRequest, request_texts

ASGIApp = Callable[..., Any]

DEFAULT_CHUNKS = 100
MODEL = "gpt-4o-mini-2024-07-18"
CREATED = 1_732_000_000
REFUSAL = "I can't help with that request."

#: A realistic chat request (what wrk and the in-process client send).
CHAT_REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {
            "role": "system",
            "content": "You are a concise assistant for an online bookshop. Answer in English.",
        },
        {
            "role": "user",
            "content": "Which three novels by Ursula K. Le Guin would you recommend to a reader "
            "new to her work, and why? Keep it under 100 words.",
        },
    ],
    "temperature": 0.2,
    "max_tokens": 256,
    "user": "user-1234",
}
STREAM_REQUEST: dict[str, Any] = {**CHAT_REQUEST, "stream": True}
ANTHROPIC_STREAM_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 256,
    "system": CHAT_REQUEST["messages"][0]["content"],
    "messages": [CHAT_REQUEST["messages"][1]],
    "metadata": {"user_id": "user-1234"},
    "stream": True,
}

_ANSWER = (
    "Start with The Left Hand of Darkness, a thought experiment about gender wrapped in a story of trust and "
    "survival on an icy planet. Then read The Dispossessed, which sets an anarchist moon against a "
    "capitalist "
    "world and refuses easy answers. Finish with A Wizard of Earthsea, a short, luminous coming-of-age tale "
    "about power and its price. Together they show her range: anthropology, politics and myth, always with "
    "clear prose and humane characters."
)

#: The fixed non-streaming answer, serialised once.
CHAT_COMPLETION: bytes = orjson.dumps(
    {
        "id": "chatcmpl-AbC123dEf456GhI789jKl012MnO",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _ANSWER, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 54,
            "completion_tokens": 92,
            "total_tokens": 146,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }
)


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-AbC123dEf456GhI789jKl012MnO",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


FIRST_CHUNK = _sse(_chunk({"role": "assistant", "content": "", "refusal": None}, None))
CONTENT_CHUNK = _sse(_chunk({"content": " token"}, None))
FINISH_CHUNK = _sse(_chunk({}, "stop"))
DONE = b"data: [DONE]\n\n"


def _event(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


_MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [],
    "stop_reason": None,
    "stop_sequence": None,
    "usage": {"input_tokens": 54, "output_tokens": 1},
}
ANTHROPIC_START = [
    _event({"type": "message_start", "message": _MESSAGE}),
    _event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
]
ANTHROPIC_DELTA = _event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " token"}})
ANTHROPIC_END = [
    _event({"type": "content_block_stop", "index": 0}),
    _event(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 92},
        }
    ),
    _event({"type": "message_stop"}),
]
ANTHROPIC_MESSAGE: bytes = orjson.dumps(
    {**_MESSAGE, "content": [{"type": "text", "text": _ANSWER}], "stop_reason": "end_turn"}
)


async def anthropic_events(count: int) -> AsyncIterator[bytes]:
    """``count`` Anthropic events (at least the 5 that frame a message; the rest text deltas), made lazily."""
    for event in ANTHROPIC_START:
        yield event
    for _ in range(max(count - 5, 0)):
        yield ANTHROPIC_DELTA
    for event in ANTHROPIC_END:
        yield event


async def stream_chunks(count: int) -> AsyncIterator[bytes]:
    """``count`` chunks (role, content…, finish) then ``[DONE]``, made lazily: memory does not grow with
    ``count``."""
    yield FIRST_CHUNK
    for _ in range(max(count - 2, 0)):
        yield CONTENT_CHUNK
    if count > 1:
        yield FINISH_CHUNK
    yield DONE


def _chunk_count(request: Request, data: dict[str, Any]) -> int:
    raw = request.query_params.get("chunks") or data.get("bench_chunks") or DEFAULT_CHUNKS
    return max(int(raw), 1)


def make_bare(delay_ms: float = 0.0) -> ASGIApp:
    """The bare downstream app; ``delay_ms`` makes every chat answer wait that long first (the "model")."""
    delay = delay_ms / 1000

    async def chat_completions(request: Request) -> Response:
        data = orjson.loads(await request.body())
        if delay:
            await asyncio.sleep(delay)
        if data.get("stream"):
            return StreamingResponse(
                stream_chunks(_chunk_count(request, data)), media_type="text/event-stream"
            )
        return Response(CHAT_COMPLETION, media_type="application/json")

    async def messages(request: Request) -> Response:
        data = orjson.loads(await request.body())
        if delay:
            await asyncio.sleep(delay)
        if data.get("stream"):
            return StreamingResponse(
                anthropic_events(_chunk_count(request, data)), media_type="text/event-stream"
            )
        return Response(ANTHROPIC_MESSAGE, media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def other(request: Request) -> Response:
        body = await request.body()
        return Response(orjson.dumps({"received": len(body)}), media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/v1/other", other, methods=["POST"]),
        ]
    )


class NoopMiddleware:
    """The cheapest pure ASGI middleware: the floor every middleware pays."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


# -- trivial hooks (the LiteLLM docs' shapes, doing as little as a hook can)


class PreCallHook:
    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> dict[str, Any]:
        return data


class PrePostHook(PreCallHook):
    async def async_post_call_success_hook(
        self, data: dict[str, Any], user_api_key_dict: Any, response: Any
    ) -> None:
        return None


class PerChunkHook:
    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: Any) -> None:
        return None


class RefuseHook:
    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> str:
        return REFUSAL


class SleepModeration:
    """A moderation hook that takes ``ms`` milliseconds (a remote classifier) and passes."""

    def __init__(self, ms: float) -> None:
        self.seconds = ms / 1000

    async def async_moderation_hook(
        self, data: dict[str, Any], user_api_key_dict: Any, call_type: str
    ) -> None:
        await asyncio.sleep(self.seconds)


class FloorGuard:
    """The least any guard that lets hooks rewrite a request must do: read the body, parse it, call the pre-call
    hook, serialise the result and replay it to the app; with ``chunk_hook``, also parse each ``data: {…}`` chunk
    of the response, call the hook and serialise it again. Nothing else: no identity, no bounds or content checks,
    no SSE framing checks, no response tracking, no error answers, no disconnect handling. Not a product, a
    reference point: the ratio it gets is the ceiling for the scenario it stands beside."""

    def __init__(self, app: ASGIApp, hook: PreCallHook | None, chunk_hook: PerChunkHook | None = None) -> None:
        self.app, self.hook, self.chunk_hook = app, hook, chunk_hook

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        message = await receive()
        body = message.get("body", b"")
        while message.get("more_body", False):
            message = await receive()
            body += message.get("body", b"")
        data = orjson.loads(body)
        if self.hook is not None:
            result = await self.hook.async_pre_call_hook(None, None, data, "completion")
            data = data if result is None else result
        replayed = orjson.dumps(data)
        pending = [{"type": "http.request", "body": replayed, "more_body": False}]

        async def replay() -> Any:
            return pending.pop() if pending else await receive()

        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(replayed)).encode()))
        await self.app({**scope, "headers": headers}, replay, send if self.chunk_hook is None else self._rewriter(send))

    def _rewriter(self, send: Any) -> Any:
        hook = self.chunk_hook
        assert hook is not None

        async def rewrite(message: Any) -> None:
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
                if body.startswith(b"data: {"):
                    chunk = orjson.loads(body[6:])
                    result = await hook.async_post_call_streaming_hook(None, chunk)
                    body = b"data: " + orjson.dumps(chunk if result is None else result) + b"\n\n"
                    message = {"type": "http.response.body", "body": body, "more_body": message.get("more_body", False)}
            await send(message)

        return rewrite


# -- guardrails (docs/guardrails.md): the same check as a guardrail and as a pre-call hook


class CheckGuardrail(CustomGuardrail):
    """A pre_call guardrail checking every request text for a word (the cost of the guardrail machinery)."""

    async def apply_guardrail(
        self, inputs: dict[str, Any], request_data: Any, input_type: str, logging_obj: Any = None
    ) -> None:
        for text in inputs["texts"]:
            if "forbidden" in text:
                raise RejectRequest("blocked")
        return None


class CheckHook:
    """The same check written as an async_pre_call_hook over the request's texts."""

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> None:
        for text in request_texts(data, call_type):
            if "forbidden" in text:
                raise RejectRequest("blocked")
        return None


class MaskGuardrail(CustomGuardrail):
    """A post_call guardrail masking a word in answers, streamed ones included; counts its calls."""

    calls = 0

    async def apply_guardrail(
        self, inputs: dict[str, Any], request_data: Any, input_type: str, logging_obj: Any = None
    ) -> dict[str, Any]:
        MaskGuardrail.calls += 1
        return {**inputs, "texts": [text.replace("s3cr3t", "[REDACTED]") for text in inputs["texts"]]}


def make_litellm_guardrail_pre() -> ASGIApp:
    """The check of ``guardrail_pre`` written on LiteLLM's own ``CustomGuardrail`` (docs/litellm.md): what running
    a LiteLLM guardrail unchanged costs over the same guardrail written on ours. Imports litellm."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from litellm.integrations.custom_guardrail import CustomGuardrail as LiteLLMCustomGuardrail

    class LiteLLMCheck(LiteLLMCustomGuardrail):
        async def apply_guardrail(
            self, inputs: Any, request_data: Any, input_type: Any, logging_obj: Any = None
        ) -> Any:
            for text in inputs["texts"]:
                if "forbidden" in text:
                    raise RejectRequest("blocked")
            return inputs

    guard = LiteLLMCheck(guardrail_name="check", event_hook="pre_call", default_on=True)
    return LLMHookMiddleware(make_bare(), hooks=[guard])


# -- variants


def make_noop() -> ASGIApp:
    return NoopMiddleware(make_bare())


def make_guarded_pre(**options: Any) -> ASGIApp:
    return LLMHookMiddleware(make_bare(), hooks=[PreCallHook()], **options)


def make_floor() -> ASGIApp:
    return FloorGuard(make_bare(), PreCallHook())


def make_floor_stream() -> ASGIApp:
    return FloorGuard(make_bare(), None, chunk_hook=PerChunkHook())


def make_guarded_pre_post() -> ASGIApp:
    return LLMHookMiddleware(make_bare(), hooks=[PrePostHook()])


def make_guarded_stream() -> ASGIApp:
    return LLMHookMiddleware(make_bare(), hooks=[PerChunkHook()])


def make_guarded_refuse() -> ASGIApp:
    return LLMHookMiddleware(make_bare(), hooks=[RefuseHook()])


def make_moderation(moderation_ms: float | None = None, app_ms: float | None = None) -> ASGIApp:
    x = float(os.environ.get("BENCH_MODERATION_MS", "20")) if moderation_ms is None else moderation_ms
    y = float(os.environ.get("BENCH_APP_MS", "50")) if app_ms is None else app_ms
    return LLMHookMiddleware(make_bare(delay_ms=y), hooks=[SleepModeration(x)])


def make_guardrail_pre() -> ASGIApp:
    return LLMHookMiddleware(make_bare(), hooks=[CheckGuardrail(guardrail_name="check", event_hook="pre_call",
                                                                default_on=True)])


def make_hook_check() -> ASGIApp:
    return LLMHookMiddleware(make_bare(), hooks=[CheckHook()])


def make_guardrail_mask() -> ASGIApp:
    return LLMHookMiddleware(make_bare(), hooks=[MaskGuardrail(guardrail_name="mask", event_hook="post_call",
                                                               default_on=True)])


VARIANTS: dict[str, Callable[[], ASGIApp]] = {
    "bare": make_bare,
    "noop": make_noop,
    "guarded_pre": make_guarded_pre,
    "floor": make_floor,
    "floor_stream": make_floor_stream,
    "guarded_pre_post": make_guarded_pre_post,
    "guarded_stream": make_guarded_stream,
    "guarded_refuse": make_guarded_refuse,
    "moderation": make_moderation,
    "guardrail_pre": make_guardrail_pre,
    "hook_check": make_hook_check,
    "guardrail_mask": make_guardrail_mask,
    "litellm_guardrail_pre": make_litellm_guardrail_pre,
}


def build(name: str) -> ASGIApp:
    try:
        factory = VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; use one of {', '.join(VARIANTS)}") from None
    return factory()


_built: dict[str, ASGIApp] = {}


def __getattr__(name: str) -> ASGIApp:
    """``benchmarks.app:guarded_pre`` for uvicorn, and ``benchmarks.app:app`` from ``BENCH_VARIANT``."""
    if name == "app":
        name = os.environ.get("BENCH_VARIANT", "bare")
    if name not in VARIANTS:
        raise AttributeError(f"module 'benchmarks.app' has no attribute {name!r}")
    if name not in _built:
        _built[name] = build(name)
    return _built[name]


def body_of(request: dict[str, Any]) -> bytes:
    return orjson.dumps(request)
