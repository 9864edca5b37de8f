"""docs/reference.md#streaming (streaming hooks, the moderation race, disconnects) through a real uvicorn server.

Clients are the official ``openai`` SDK and raw ``httpx`` streaming, so what is checked is what goes over the wire:
rewritten chunks, clean stream endings after a hook failed, first-chunk latency (nothing buffers a stream) and the
moderation race's latency and cancellation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import orjson
import pytest
from fastapi import HTTPException

from asgi_llm_guard import LLMHookMiddleware, RejectRequest
from tests.apps import Downstream, chat, chat_chunk, chat_completion, guarded, sse
from tests.servers import serve

WORDS = ("alpha", " beta", " gamma", " delta", " epsilon")
TEXT = "".join(WORDS)
MESSAGES = [{"role": "user", "content": "good morning"}]


@asynccontextmanager
async def sdk(app: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with serve(app) as base_url:
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0) as client:
            yield client


@asynccontextmanager
async def raw_http(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            yield client


def sse_data(body: bytes) -> list[bytes]:
    """The ``data:`` payloads of an SSE body, in order."""
    text = body.replace(b"\r\n", b"\n")
    out = []
    for event in text.split(b"\n\n"):
        lines = [line[len(b"data:") :].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        if lines:
            out.append(b"\n".join(lines))
    return out


async def wait_for(condition: Any, timeout: float = 3.0) -> bool:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return bool(condition())


# -- hooks --------------------------------------------------------------------------------------------------


class Upper:
    """Per-chunk: upper-cases the chunk's text (chat delta content, or text-completion text)."""

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict[str, Any]) -> Any:
        choice = response["choices"][0]
        if "delta" in choice:
            if choice["delta"].get("content"):
                choice["delta"]["content"] = choice["delta"]["content"].upper()
        elif choice.get("text"):
            choice["text"] = choice["text"].upper()
        return response


class PairBuffer:
    """Iterator hook: holds chunks two at a time, then yields them (unchanged)."""

    def __init__(self) -> None:
        self.seen = 0

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        buffer: list[dict[str, Any]] = []
        async for chunk in response:
            self.seen += 1
            buffer.append(chunk)
            if len(buffer) == 2:
                for held in buffer:
                    yield held
                buffer = []
        for held in buffer:
            yield held


class PairMerge:
    """Iterator hook: merges every two chat chunks into one (contents joined, the last finish_reason kept)."""

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        pending: dict[str, Any] | None = None
        async for chunk in response:
            if pending is None:
                pending = chunk
                continue
            merged = dict(pending)
            first, second = pending["choices"][0], chunk["choices"][0]
            content = (first["delta"].get("content") or "") + (second["delta"].get("content") or "")
            merged["choices"] = [
                {
                    **first,
                    "delta": {"content": content} if content else {},
                    "finish_reason": second["finish_reason"] or first["finish_reason"],
                }
            ]
            yield merged
            pending = None
        if pending is not None:
            yield pending


class FailOnThird:
    """Per-chunk: a bug on the third chunk."""

    def __init__(self) -> None:
        self.calls = 0

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict[str, Any]) -> Any:
        self.calls += 1
        if self.calls == 3:
            raise ValueError("boom on the third chunk")
        return None


class StopOnThird:
    def __init__(self) -> None:
        self.calls = 0

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict[str, Any]) -> Any:
        self.calls += 1
        if self.calls == 3:
            raise RejectRequest("stopped")
        return None


class ForbidFirst:
    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict[str, Any]) -> Any:
        raise HTTPException(403, detail="not for you")


class RouteModel:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: Any, call_type: str) -> Any:
        data["model"] = "routed-model"
        return data


class Failures:
    def __init__(self) -> None:
        self.exceptions: list[BaseException] = []

    async def async_post_call_failure_hook(
        self, request_data: Any, original_exception: BaseException, user_api_key_dict: Any
    ) -> None:
        self.exceptions.append(original_exception)


# -- downstream apps ----------------------------------------------------------------------------------------


class SlowAnswer:
    """Reads the body, waits ``delay`` seconds, answers a chat completion; records how it ended."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.called = 0
        self.finished = False
        self.cancelled = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.called += 1
        while True:
            message = await receive()
            if not message.get("more_body", False):
                break
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        body = orjson.dumps(chat_completion("gpt-test", "slow answer"))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        self.finished = True


class Endless:
    """Streams chat chunks every 50 ms until it is cancelled."""

    def __init__(self) -> None:
        self.sent = 0
        self.cancelled = False
        self.ended = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        while True:
            message = await receive()
            if not message.get("more_body", False):
                break
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            while True:
                (event,) = sse([chat_chunk("gpt-test", f" w{self.sent}")], done=False)
                await send({"type": "http.response.body", "body": event, "more_body": True})
                self.sent += 1
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.ended = True


# -- per-chunk rewriting -------------------------------------------------------------------------------------


async def test_per_chunk_hook_rewrites_chat_stream() -> None:
    app, _ = guarded(Upper(), downstream=Downstream(words=WORDS))
    async with sdk(app) as client:
        stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        deltas = [c.choices[0].delta.content async for c in stream if c.choices]

    assert [d for d in deltas if d] == [w.upper() for w in WORDS]


async def test_per_chunk_hook_rewrites_text_completion_stream() -> None:
    app, _ = guarded(Upper(), downstream=Downstream(words=WORDS))
    async with sdk(app) as client:
        stream = await client.completions.create(model="gpt-test", prompt="say it", stream=True)
        texts = [c.choices[0].text async for c in stream]

    assert [t for t in texts if t] == [w.upper() for w in WORDS]


# -- iterator hooks ------------------------------------------------------------------------------------------


async def test_buffering_iterator_hook_keeps_everything_in_order() -> None:
    hook = PairBuffer()
    app, _ = guarded(hook, downstream=Downstream(words=WORDS, delay=0.01))
    async with sdk(app) as client:
        stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        chunks = [c async for c in stream]

    assert [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content] == list(WORDS)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert hook.seen == len(WORDS) + 1


async def test_merging_iterator_hook_keeps_all_content() -> None:
    app, _ = guarded(PairMerge(), downstream=Downstream(words=WORDS, delay=0.01))
    async with serve(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            raw = await http.post("/v1/chat/completions", json=chat(stream=True))
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0) as client:
            stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
            chunks = [c async for c in stream]

    assert raw.status_code == 200
    assert raw.content.endswith(b"data: [DONE]\n\n")
    # 5 words + finish chunk = 6 chunks, merged pairwise into 3
    assert len(chunks) == 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    assert [c.choices[0].delta.content for c in chunks] == ["alpha beta", " gamma delta", " epsilon"]
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, "stop"]


# -- hooks failing mid-stream --------------------------------------------------------------------------------


async def test_per_chunk_bug_mid_stream_sdk_raises_after_first_chunks() -> None:
    app, _ = guarded(FailOnThird(), downstream=Downstream(words=WORDS, delay=0.01))
    received: list[str] = []
    async with sdk(app) as client:
        stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")

    assert received == ["alpha", " beta"]
    error = caught.value
    assert not isinstance(error, openai.APIStatusError)  # raised from the stream, not from a status
    assert error.message == "streaming hook FailOnThird failed"
    assert isinstance(error.body, dict) and error.body["message"] == "streaming hook FailOnThird failed"


async def test_per_chunk_bug_mid_stream_ends_the_http_response_cleanly() -> None:
    app, _ = guarded(FailOnThird(), downstream=Downstream(words=WORDS, delay=0.01))
    async with raw_http(app) as http:
        async with http.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as response:
            assert response.status_code == 200
            body = b"".join([piece async for piece in response.aiter_raw()])

    assert body.endswith(b"data: [DONE]\n\n")
    payloads = sse_data(body)
    assert payloads[-1] == b"[DONE]"
    error = orjson.loads(payloads[-2])
    assert error == {
        "error": {
            "message": "streaming hook FailOnThird failed",
            "type": "internal_server_error",
            "param": None,
            "code": "500",
        }
    }
    assert [orjson.loads(p)["choices"][0]["delta"]["content"] for p in payloads[:-2]] == ["alpha", " beta"]
    assert b"boom" not in body


async def test_refusal_mid_chat_stream_reads_as_a_normal_stream() -> None:
    app, _ = guarded(StopOnThird(), downstream=Downstream(words=WORDS, delay=0.01))
    async with sdk(app) as client:
        stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        chunks = [c async for c in stream]

    assert [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content] == ["alpha", " beta", "stopped"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.id for c in chunks} == {"chatcmpl-down"}


async def test_refusal_mid_text_completion_stream() -> None:
    app, _ = guarded(StopOnThird(), downstream=Downstream(words=WORDS, delay=0.01))
    async with sdk(app) as client:
        stream = await client.completions.create(model="gpt-test", prompt="say it", stream=True)
        chunks = [c async for c in stream]

    assert [c.choices[0].text for c in chunks if c.choices[0].text] == ["alpha", " beta", "stopped"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_refusal_mid_stream_raw_body_ends_with_done() -> None:
    app, _ = guarded(StopOnThird(), downstream=Downstream(words=WORDS, delay=0.01))
    async with raw_http(app) as http:
        async with http.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as response:
            body = b"".join([piece async for piece in response.aiter_raw()])

    assert response.status_code == 200
    assert body.endswith(b"data: [DONE]\n\n")
    assert body.count(b"[DONE]") == 1


async def test_hook_failing_on_first_chunk_gets_the_real_status() -> None:
    failures = Failures()
    app, _ = guarded(ForbidFirst(), failures, downstream=Downstream(words=WORDS))
    async with sdk(app) as client:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)

    error = caught.value
    assert error.status_code == 403
    assert error.response.headers["content-type"] == "application/json"
    assert error.response.headers["x-llm-guard-rejected"] == "streaming"
    assert isinstance(error.body, dict) and error.body["message"] == "not for you"
    assert error.body["type"] == "permission_error"
    assert len(failures.exceptions) == 1


# -- nothing buffers a stream --------------------------------------------------------------------------------


async def first_chunk_and_total(app: Any) -> tuple[float, float, bytes]:
    async with raw_http(app) as http:
        started = time.perf_counter()
        first: float | None = None
        pieces: list[bytes] = []
        async with http.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as response:
            assert response.status_code == 200
            async for piece in response.aiter_raw():
                if piece and first is None:
                    first = time.perf_counter() - started
                pieces.append(piece)
        total = time.perf_counter() - started
    assert first is not None
    return first, total, b"".join(pieces)


# 8 words + the finish chunk + [DONE]: 10 events, 0.2 s apart, about 2 s in all.
SLOW_WORDS = tuple(f" w{i}" for i in range(8))


@pytest.mark.parametrize("per_chunk", [False, True], ids=["pre_call_only", "with_per_chunk_hook"])
async def test_first_chunk_arrives_before_the_stream_ends(per_chunk: bool) -> None:
    hooks: list[object] = [RouteModel()]
    if per_chunk:
        hooks.append(Upper())
    app = LLMHookMiddleware(Downstream(words=SLOW_WORDS, delay=0.2), hooks=hooks)

    first, total, body = await first_chunk_and_total(app)

    assert first < 0.8, f"first chunk after {first:.2f}s: the stream was buffered"
    assert total > 1.6, f"the whole stream took only {total:.2f}s"
    payloads = sse_data(body)
    assert payloads[-1] == b"[DONE]"
    contents = [orjson.loads(p)["choices"][0]["delta"].get("content") for p in payloads[:-1]]
    expected = [w.upper() if per_chunk else w for w in SLOW_WORDS]
    assert contents == [*expected, None]
    assert {orjson.loads(p)["model"] for p in payloads[:-1]} == {"routed-model"}


# -- the moderation race -------------------------------------------------------------------------------------


class SlowModeration:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.passed = False

    async def async_moderation_hook(self, data: Any, user_api_key_dict: Any, call_type: str) -> None:
        await asyncio.sleep(self.delay)
        self.passed = True


class BlockAtOnce:
    def __init__(self, how: str) -> None:
        self.how = how
        self.calls = 0

    async def async_moderation_hook(self, data: Any, user_api_key_dict: Any, call_type: str) -> None:
        self.calls += 1
        if self.how == "reject":
            raise RejectRequest("blocked by moderation")
        raise HTTPException(400, detail="blocked by moderation")


async def test_moderation_runs_in_parallel_with_the_downstream() -> None:
    down = SlowAnswer(0.5)
    moderation = SlowModeration(0.5)
    app = LLMHookMiddleware(down, hooks=[moderation])
    async with sdk(app) as client:
        started = time.perf_counter()
        completion = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        elapsed = time.perf_counter() - started

    assert completion.choices[0].message.content == "slow answer"
    assert moderation.passed and down.finished
    assert elapsed < 0.9, f"moderation and downstream took {elapsed:.2f}s: they did not run in parallel"


@pytest.mark.parametrize("how", ["reject", "http_exception"])
async def test_moderation_rejection_cancels_the_downstream(how: str) -> None:
    down = SlowAnswer(5.0)
    moderation = BlockAtOnce(how)
    app = LLMHookMiddleware(down, hooks=[moderation])
    async with raw_http(app) as http:
        started = time.perf_counter()
        response = await http.post("/v1/chat/completions", json=chat())
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.3)
        finished_after_wait = down.finished

    assert elapsed < 1.0, f"the refusal took {elapsed:.2f}s"
    assert moderation.calls == 1
    assert response.headers["x-llm-guard-rejected"] == "moderation"
    if how == "reject":
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == "blocked by moderation"
        assert response.json()["model"] == "gpt-test"
    else:
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "blocked by moderation"
    assert b"slow answer" not in response.content
    assert not finished_after_wait
    # the downstream was either cancelled while it waited or never got to run
    assert down.cancelled or down.called == 0


class BlockOnceDownstreamRuns:
    """Waits until the downstream app is running, then rejects at once."""

    def __init__(self, down: SlowAnswer) -> None:
        self.down = down

    async def async_moderation_hook(self, data: Any, user_api_key_dict: Any, call_type: str) -> None:
        while not self.down.called:
            await asyncio.sleep(0.005)
        raise RejectRequest("blocked by moderation")


async def test_moderation_rejection_cancels_a_running_downstream() -> None:
    down = SlowAnswer(5.0)
    app = LLMHookMiddleware(down, hooks=[BlockOnceDownstreamRuns(down)])
    async with raw_http(app) as http:
        started = time.perf_counter()
        response = await http.post("/v1/chat/completions", json=chat())
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.3)
        finished_after_wait = down.finished

    assert elapsed < 1.0, f"the refusal took {elapsed:.2f}s"
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "blocked by moderation"
    assert down.called == 1
    assert down.cancelled
    assert not finished_after_wait


async def test_moderation_before_never_calls_the_downstream() -> None:
    down = Downstream()
    app = LLMHookMiddleware(down, hooks=[BlockAtOnce("reject")], moderation="before")
    async with sdk(app) as client:
        raw = await client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
        completion = raw.parse()
        stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream])

    assert raw.headers["x-llm-guard-rejected"] == "moderation"
    assert completion.choices[0].message.content == "blocked by moderation"
    assert streamed == "blocked by moderation"
    assert down.received == []


# -- client disconnect ---------------------------------------------------------------------------------------


DISCONNECT_HOOKS: dict[str, Any] = {
    "failure_hook_only": lambda: [],
    "per_chunk_hook": lambda: [Upper()],
    "iterator_hook": lambda: [PairBuffer()],
    "moderation_race": lambda: [SlowModeration(0.0)],
}


@pytest.mark.parametrize("extra_hooks", list(DISCONNECT_HOOKS))
async def test_client_disconnect_mid_stream_cancels_the_downstream(extra_hooks: str) -> None:
    down = Endless()
    failures = Failures()
    app = LLMHookMiddleware(down, hooks=[*DISCONNECT_HOOKS[extra_hooks](), failures])
    async with raw_http(app) as http:
        async with http.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as response:
            assert response.status_code == 200
            seen = b""
            async for piece in response.aiter_raw():
                seen += piece
                if seen.count(b"data:") >= 2:
                    break
        closed = time.perf_counter()

        assert await wait_for(lambda: down.cancelled and len(failures.exceptions) >= 1, timeout=2.0), (
            f"after {time.perf_counter() - closed:.2f}s: cancelled={down.cancelled}, "
            f"failures={failures.exceptions!r}"
        )
        sent_at_cancel = down.sent
        await asyncio.sleep(0.2)

    assert down.ended
    assert down.sent == sent_at_cancel  # nothing kept streaming
    assert len(failures.exceptions) == 1
    assert getattr(failures.exceptions[0], "status_code", None) == 499
