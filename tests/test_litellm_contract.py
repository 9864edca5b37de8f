"""What a LiteLLM ``CustomLogger`` gets from the middleware, as the proxy gives it (docs/litellm.md): LiteLLM's
response object per call type in success hooks (edits and return values reach the client as JSON),
``ModelResponseStream`` chunks in iterator hooks, the text so far (a ``str``) in the per-chunk hook, and the
logging callbacks once per request with the ``kwargs`` LiteLLM's hooks read. In process, real LiteLLM classes."""

from __future__ import annotations

from typing import Any

import orjson

from asgi_llm_guard import LLMHookMiddleware
from tests.apps import Downstream, chat, client
from tests.litellm_support import load_litellm

litellm = load_litellm()
from litellm.integrations.custom_logger import CustomLogger  # noqa: E402


class SeesResponses(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.types: list[str] = []

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        self.types.append(type(response).__name__)
        if isinstance(response, litellm.ModelResponse):
            response.choices[0].message.content = response.choices[0].message.content.upper()  # in place
        return None


async def post(app: Any, path: str, body: dict[str, Any]) -> Any:
    async with client(app) as c:
        return await c.post(path, json=body)


async def test_chat_success_hook_gets_a_model_response_and_its_edit_reaches_the_client() -> None:
    hook = SeesResponses()
    response = await post(LLMHookMiddleware(Downstream(), hooks=[hook]), "/v1/chat/completions", chat())
    assert hook.types == ["ModelResponse"]
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "HELLO FROM THE MODEL"
    assert body["id"] == "chatcmpl-down" and body["usage"]["total_tokens"] == 5


async def test_an_unchanged_response_keeps_the_apps_bytes() -> None:
    class Reads(CustomLogger):
        async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
            assert isinstance(response, litellm.ModelResponse)
            return response  # as Lakera does when it finds nothing

    response = await post(LLMHookMiddleware(Downstream(), hooks=[Reads()]), "/v1/chat/completions", chat())
    assert response.json()["choices"][0]["logprobs"] is None  # a null LiteLLM's dump would drop: the app's JSON


async def test_text_completion_and_embeddings_get_their_litellm_types() -> None:
    hook = SeesResponses()
    app = LLMHookMiddleware(Downstream(), hooks=[hook])
    await post(app, "/v1/completions", {"model": "m", "prompt": "hi"})
    await post(app, "/v1/embeddings", {"model": "m", "input": "hi"})
    assert hook.types == ["TextCompletionResponse", "EmbeddingResponse"]


async def test_a_returned_object_replaces_the_body_as_json() -> None:
    class Replaces(CustomLogger):
        async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
            return litellm.ModelResponse(
                id="chatcmpl-new", model="m", choices=[{"message": {"role": "assistant", "content": "replaced"}}]
            )

    response = await post(LLMHookMiddleware(Downstream(), hooks=[Replaces()]), "/v1/chat/completions", chat())
    body = response.json()
    assert body["id"] == "chatcmpl-new" and body["choices"][0]["message"]["content"] == "replaced"


class IteratorSeesChunks(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.types: set[str] = set()

    async def async_post_call_streaming_iterator_hook(self, user_api_key_dict: Any, response: Any, request_data: dict):
        async for chunk in response:
            self.types.add(type(chunk).__name__)
            if isinstance(chunk, litellm.ModelResponseStream) and chunk.choices and chunk.choices[0].delta.content:
                chunk.choices[0].delta.content = chunk.choices[0].delta.content.upper()
            yield chunk


def stream_text(raw: bytes) -> str:
    text = ""
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            chunk = orjson.loads(line[6:])
            for choice in chunk.get("choices", []):
                text += (choice.get("delta") or {}).get("content") or choice.get("text") or ""
    return text


async def test_iterator_hook_gets_model_response_stream_chunks_and_edits_go_out() -> None:
    hook = IteratorSeesChunks()
    response = await post(LLMHookMiddleware(Downstream(), hooks=[hook]), "/v1/chat/completions", chat(stream=True))
    assert hook.types == {"ModelResponseStream"}
    assert stream_text(response.content) == "HELLO FROM THE MODEL"
    assert response.content.endswith(b"data: [DONE]\n\n")


async def test_iterator_hook_gets_text_completion_objects_for_text_streams() -> None:
    hook = IteratorSeesChunks()
    app = LLMHookMiddleware(Downstream(), hooks=[hook])
    response = await post(app, "/v1/completions", {"model": "m", "prompt": "hi", "stream": True})
    assert hook.types == {"TextCompletionResponse"}
    assert stream_text(response.content) == "Hello from the model"


class PerChunk(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: str) -> Any:
        self.seen.append(response)
        if "the model" in response.lower():  # a hook that calls .lower() on what LiteLLM passes: a str
            raise ValueError("stop")
        return None


async def test_per_chunk_hook_gets_the_text_so_far_as_a_string() -> None:
    hook = PerChunk()
    response = await post(LLMHookMiddleware(Downstream(), hooks=[hook]), "/v1/chat/completions", chat(stream=True))
    assert hook.seen == ["Hello", "Hello from", "Hello from the", "Hello from the model"]
    assert b'"error"' in response.content and response.content.endswith(b"data: [DONE]\n\n")
    assert stream_text(response.content) == "Hello from the"


async def test_per_chunk_hook_is_not_called_for_text_completion_streams() -> None:
    hook = PerChunk()
    app = LLMHookMiddleware(Downstream(), hooks=[hook])
    response = await post(app, "/v1/completions", {"model": "m", "prompt": "hi", "stream": True})
    assert hook.seen == []
    assert stream_text(response.content) == "Hello from the model"


class Logs(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, Any, Any]] = []

    async def async_log_success_event(self, kwargs: dict, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.events.append(("success", kwargs, response_obj))

    async def async_log_failure_event(self, kwargs: dict, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.events.append(("failure", kwargs, kwargs.get("exception")))


async def test_success_is_logged_once_with_the_fields_litellm_hooks_read() -> None:
    hook = Logs()
    app = LLMHookMiddleware(Downstream(), hooks=[hook])
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat(user="end-1"), headers={"Authorization": "Bearer sk-1"})
    [(kind, kwargs, response_obj)] = hook.events
    assert kind == "success"
    metadata = kwargs["litellm_params"]["metadata"]
    assert metadata["user_api_key"] is not None and metadata["user_api_key"] != "sk-1"  # the hash, never the key
    assert kwargs["user"] == "end-1" and kwargs["call_type"] == "acompletion" and kwargs["model"] == "gpt-test"
    assert kwargs["standard_logging_object"]["total_tokens"] == 5
    assert isinstance(response_obj, litellm.ModelResponse)


async def test_failure_is_logged_once_with_the_exception() -> None:
    hook = Logs()
    app = LLMHookMiddleware(Downstream(status=503), hooks=[hook])
    async with client(app) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 503
    [(kind, kwargs, exception)] = hook.events
    assert kind == "failure" and getattr(exception, "status_code", None) == 503


async def test_a_logging_only_class_leaves_streams_unparsed() -> None:
    app = LLMHookMiddleware(Downstream(), hooks=[Logs()])
    assert not app.hooks.streaming and not app.hooks.streaming_iterator and not app.hooks.pre_call


from litellm.integrations.custom_guardrail import CustomGuardrail as LiteLLMGuardrail  # noqa: E402


class StreamGuard(LiteLLMGuardrail):
    """A LiteLLM guardrail written with stream hooks (no apply_guardrail), as Azure's text moderation is."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.texts: list[str] = []
        self.chunk_types: set[str] = set()

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: str) -> Any:
        self.texts.append(response)
        return None

    async def async_post_call_streaming_iterator_hook(self, user_api_key_dict: Any, response: Any, request_data: dict):
        async for chunk in response:
            self.chunk_types.add(type(chunk).__name__)
            yield chunk


async def test_a_guardrails_stream_hooks_run_gated_with_litellms_objects() -> None:
    guard = StreamGuard(guardrail_name="sg", event_hook="post_call")
    app = LLMHookMiddleware(Downstream(), hooks=[guard])
    async with client(app) as c:
        skipped = await c.post("/v1/chat/completions", json=chat(stream=True))
        ran = await c.post("/v1/chat/completions", json=chat(stream=True, guardrails=["sg"]))
    assert stream_text(skipped.content) == stream_text(ran.content) == "Hello from the model"
    assert "x-llm-guard-applied-guardrails" not in skipped.headers
    assert ran.headers["x-llm-guard-applied-guardrails"] == "sg"
    # every chunk, the finish chunk too (its text adds nothing), as the proxy calls it
    assert guard.texts == ["Hello", "Hello from", "Hello from the", "Hello from the model", "Hello from the model"]
    assert guard.chunk_types == {"ModelResponseStream"}
