"""CustomGuardrail (docs/reference.md#guardrails): construction, selection, stages, write-back, reporting, faults (in
process)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from asgi_llm_guard import CustomGuardrail, LLMHookMiddleware, RejectRequest, UserAPIKeyAuth
from asgi_llm_guard.observe import Observer
from tests.apps import Downstream, chat, client

pytestmark = pytest.mark.anyio

HEADER = "x-llm-guard-applied-guardrails"


class NoSecrets(CustomGuardrail):
    """The example of docs/guardrails.md: masks s3cr3t, blocks rm -rf."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[str, list[str]]] = []

    async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
        self.calls.append((input_type, list(inputs["texts"])))
        texts = [t.replace("s3cr3t", "[REDACTED]") for t in inputs["texts"]]
        if any("rm -rf" in t for t in texts):
            raise RejectRequest("I can't help with that.")
        return {**inputs, "texts": texts}


class Recorder(Observer):
    def __init__(self) -> None:
        self.decisions: list[tuple[str, str, str, str | None]] = []

    def guardrail_finished(self, guardrail: str, stage: str, decision: str, seconds: float, reason: str | None) -> None:
        assert seconds >= 0
        self.decisions.append((guardrail, stage, decision, reason))


def _app(*hooks: object, words: tuple[str, ...] = ("Hello", " from", " the", " model"), **options: Any) -> tuple[
    LLMHookMiddleware, Downstream
]:
    down = Downstream(words=words)
    return LLMHookMiddleware(down, hooks=list(hooks), **options), down


# -- construction -------------------------------------------------------------------------------------------


def test_constructor_keeps_litellm_keywords_and_unknown_ones_as_attributes() -> None:
    guard = CustomGuardrail(guardrail_name="g", event_hook="pre_call", default_on=True, mask_request_content=True,
                            api_base="http://x", timeout=2.0)
    assert guard.guardrail_name == "g" and guard.event_hook == "pre_call" and guard.default_on is True
    assert guard.mask_request_content is True and guard.api_base == "http://x" and guard.timeout == 2.0


def test_unknown_mode_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="pre_calll"):
        CustomGuardrail(guardrail_name="g", event_hook="pre_calll")
    with pytest.raises(ValueError, match="during"):
        CustomGuardrail(guardrail_name="g", event_hook=["pre_call", "during"])


def test_event_hook_of_the_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="event_hook"):
        CustomGuardrail(guardrail_name="g", event_hook=3)


def test_should_run_guardrail_default_rules() -> None:
    guard = CustomGuardrail(guardrail_name="g", event_hook=["pre_call", "post_call"])
    assert not guard.should_run_guardrail({}, "pre_call")
    assert guard.should_run_guardrail({"guardrails": ["g"]}, "pre_call")
    assert guard.should_run_guardrail({"metadata": {"guardrails": [{"g": {}}]}}, "post_call")
    assert not guard.should_run_guardrail({"guardrails": ["g"]}, "during_call")
    on = CustomGuardrail(guardrail_name="h", event_hook="pre_call", default_on=True)
    assert on.should_run_guardrail({"guardrails": []}, "pre_call")


# -- pre_call -----------------------------------------------------------------------------------------------


async def test_pre_call_masks_the_forwarded_request_and_reports_the_header() -> None:
    guard = NoSecrets(guardrail_name="no-secrets", event_hook="pre_call", default_on=True)
    app, down = _app(guard)
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("my s3cr3t key", guardrails=["other"]))
    assert r.status_code == 200
    assert r.headers[HEADER] == "no-secrets"
    forwarded = down.received[0].json
    assert forwarded["messages"][0]["content"] == "my [REDACTED] key"
    assert "guardrails" not in forwarded


async def test_pre_call_block_is_a_refusal_in_the_routes_format() -> None:
    app, down = _app(NoSecrets(guardrail_name="no-secrets", event_hook="pre_call", default_on=True))
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("please rm -rf /"))
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "I can't help with that."
    assert r.headers["x-llm-guard-rejected"] == "pre_call"
    assert r.headers[HEADER] == "no-secrets"
    assert down.received == []


async def test_not_default_on_runs_only_when_the_request_names_it() -> None:
    guard = NoSecrets(guardrail_name="no-secrets", event_hook="pre_call")
    app, down = _app(guard)
    async with client(app) as c:
        plain = await c.post("/v1/chat/completions", json=chat("s3cr3t"))
        named = await c.post("/v1/chat/completions", json=chat("s3cr3t", guardrails=["no-secrets"]))
        in_metadata = await c.post(
            "/v1/chat/completions", json=chat("s3cr3t", metadata={"guardrails": ["no-secrets"], "k": "v"})
        )
    assert HEADER not in plain.headers
    assert down.received[0].json["messages"][0]["content"] == "s3cr3t"
    assert named.headers[HEADER] == "no-secrets"
    assert down.received[1].json["messages"][0]["content"] == "[REDACTED]"
    assert in_metadata.headers[HEADER] == "no-secrets"
    assert down.received[2].json["messages"][0]["content"] == "[REDACTED]"
    assert down.received[2].json["metadata"] == {"k": "v"}  # guardrails removed, the rest forwarded


async def test_identity_metadata_selects_a_guardrail() -> None:
    async def auth(scope: Any) -> UserAPIKeyAuth:
        return UserAPIKeyAuth(api_key="k", metadata={"guardrails": ["no-secrets"]})

    app, down = _app(NoSecrets(guardrail_name="no-secrets", event_hook="pre_call"), auth=auth)
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("s3cr3t"))
    assert r.headers[HEADER] == "no-secrets"
    assert down.received[0].json["messages"][0]["content"] == "[REDACTED]"


async def test_a_request_cannot_remove_a_default_on_guardrail() -> None:
    app, down = _app(NoSecrets(guardrail_name="no-secrets", event_hook="pre_call", default_on=True))
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat("s3cr3t", guardrails=[], disable_global_guardrails=True))
    assert down.received[0].json["messages"][0]["content"] == "[REDACTED]"


async def test_texts_in_every_request_route() -> None:
    guard = NoSecrets(guardrail_name="g", event_hook="pre_call", default_on=True)
    app, down = _app(guard)
    bodies = {
        "/v1/chat/completions": {"model": "m", "messages": [
            {"role": "system", "content": "sys s3cr3t"},
            {"role": "user", "content": [{"type": "text", "text": "part s3cr3t"},
                                         {"type": "image_url", "image_url": {"url": "https://x/s3cr3t.png"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\": \"s3cr3t\"}"}}]},
        ]},
        "/v1/completions": {"model": "m", "prompt": ["p s3cr3t", "q"]},
        "/v1/responses": {"model": "m", "instructions": "i s3cr3t", "input": "in s3cr3t"},
        "/v1/embeddings": {"model": "m", "input": ["e s3cr3t", "f"]},
        "/v1/images/generations": {"model": "m", "prompt": "img s3cr3t"},
    }
    async with client(app) as c:
        for path, body in bodies.items():
            r = await c.post(path, json=body)
            assert r.status_code == 200, path
    chat_in, text_in, responses_in, embeddings_in, image_in = (r.json for r in down.received)
    assert chat_in["messages"][0]["content"] == "sys [REDACTED]"
    assert chat_in["messages"][1]["content"][0]["text"] == "part [REDACTED]"
    assert chat_in["messages"][1]["content"][1]["image_url"]["url"] == "https://x/s3cr3t.png"  # an image, not text
    assert "s3cr3t" in chat_in["messages"][2]["tool_calls"][0]["function"]["arguments"]  # tool_calls, not texts
    assert text_in["prompt"] == ["p [REDACTED]", "q"]
    assert responses_in["instructions"] == "i [REDACTED]" and responses_in["input"] == "in [REDACTED]"
    assert embeddings_in["input"] == ["e [REDACTED]", "f"]
    assert image_in["prompt"] == "img [REDACTED]"


async def test_inputs_carry_tool_calls_structured_messages_images_and_model() -> None:
    seen: list[dict[str, Any]] = []

    class Spy(CustomGuardrail):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            seen.append(inputs)
            return None

    app, _ = _app(Spy(guardrail_name="spy", event_hook="pre_call", default_on=True))
    tool_call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
    ]
    async with client(app) as c:
        await c.post("/v1/chat/completions", json={"model": "m", "messages": messages})
    assert seen == [{"texts": ["look"], "structured_messages": messages, "tool_calls": [tool_call],
                     "images": ["https://x/a.png"], "model": "m"}]


# -- wrong shapes and faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [{"texts": ["a", "b"]}, {"texts": [1]}, "text", {"texts": "abc"}],
    ids=["count", "non-str", "not-a-dict", "texts-not-a-list"],
)
async def test_a_wrong_shape_is_that_guards_500_never_a_corrupt_body(result: Any) -> None:
    class Broken(CustomGuardrail):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            return result

    recorder = Recorder()
    app, down = _app(Broken(guardrail_name="broken", event_hook="pre_call", default_on=True), observer=recorder)
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("hello"))
    assert r.status_code == 500
    message = r.json()["error"]["message"]
    assert message == "pre_call hook Broken failed"
    assert down.received == []
    assert recorder.decisions[0][:3] == ("broken", "pre_call", "error")


async def test_a_guard_that_raises_is_a_500_naming_it() -> None:
    class Raises(CustomGuardrail):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            raise KeyError("boom")

    app, down = _app(Raises(guardrail_name="raises", event_hook="pre_call", default_on=True))
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("hello"))
    assert r.status_code == 500 and r.json()["error"]["message"] == "pre_call hook Raises failed"
    assert down.received == []


class Hangs(CustomGuardrail):
    async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
        await asyncio.sleep(30)


async def test_a_hanging_guard_is_bounded_by_hook_timeout_and_fails_closed() -> None:
    recorder = Recorder()
    app, down = _app(Hangs(guardrail_name="hangs", event_hook="pre_call", default_on=True), hook_timeout=0.05,
                     observer=recorder)
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("hello"))
    assert r.status_code == 503 and r.json()["error"]["type"] == "timeout_error"
    assert down.received == []
    assert recorder.decisions == [("hangs", "pre_call", "error", "timed out after 0.05s")]


async def test_a_hanging_fail_open_guard_lets_the_request_through_unchanged() -> None:
    app, down = _app(Hangs(guardrail_name="hangs", event_hook="pre_call", default_on=True, timeout=0.05,
                           fail_open=True))
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("hello"))
    assert r.status_code == 200 and r.headers[HEADER] == "hangs"
    assert down.received[0].json["messages"][0]["content"] == "hello"


# -- during_call --------------------------------------------------------------------------------------------


async def test_during_call_blocks_and_cancels_the_app_but_never_modifies() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    class Blocks(CustomGuardrail):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            await started.wait()
            if "bad" in inputs["texts"][0]:
                raise RejectRequest("no")
            return {**inputs, "texts": ["rewritten"]}

    app = LLMHookMiddleware(slow_app, hooks=[Blocks(guardrail_name="b", event_hook="during_call", default_on=True)])
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("bad"))
    assert r.json()["choices"][0]["message"]["content"] == "no"
    assert r.headers["x-llm-guard-rejected"] == "moderation"
    assert cancelled.is_set()

    seen: list[str] = []
    down = Downstream()

    class Rewrites(CustomGuardrail):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            return {**inputs, "texts": ["rewritten"]}

    app = LLMHookMiddleware(down, hooks=[Rewrites(guardrail_name="r", event_hook="during_call", default_on=True)])
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("fine"))
    seen.append(down.received[0].json["messages"][0]["content"])
    assert seen == ["fine"] and r.headers[HEADER] == "r"


# -- post_call, not streamed ---------------------------------------------------------------------------------


async def test_post_call_masks_and_blocks_a_json_response() -> None:
    guard = NoSecrets(guardrail_name="ns", event_hook="post_call", default_on=True)
    app, _ = _app(guard, words=("the ", "s3cr3t", " is out"))
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("hi"))
        t = await c.post("/v1/completions", json={"model": "m", "prompt": "hi"})
    assert r.json()["choices"][0]["message"]["content"] == "the [REDACTED] is out"
    assert r.headers[HEADER] == "ns"
    assert int(r.headers["content-length"]) == len(r.content)
    assert t.json()["choices"][0]["text"] == "the [REDACTED] is out"
    assert guard.calls == [("response", ["the s3cr3t is out"]), ("response", ["the s3cr3t is out"])]

    app, _ = _app(NoSecrets(guardrail_name="ns", event_hook="post_call", default_on=True), words=("rm -rf /",))
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("hi"))
    assert r.json()["choices"][0]["message"]["content"] == "I can't help with that."
    assert r.headers["x-llm-guard-rejected"] == "post_call"


# -- logging_only ---------------------------------------------------------------------------------------------


async def test_logging_only_is_recorded_and_never_blocks_or_modifies() -> None:
    class Raises(CustomGuardrail):
        async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
            raise RuntimeError("broken monitor")

    recorder = Recorder()
    monitor = NoSecrets(guardrail_name="monitor", event_hook="logging_only", default_on=True)
    app, down = _app(monitor, Raises(guardrail_name="raises", event_hook="logging_only", default_on=True),
                     Hangs(guardrail_name="hangs", event_hook="logging_only", default_on=True, timeout=0.05),
                     observer=recorder, words=("s3cr3t", " and rm -rf"))
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("rm -rf s3cr3t"))
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "s3cr3t and rm -rf"
    assert down.received[0].json["messages"][0]["content"] == "rm -rf s3cr3t"
    assert r.headers[HEADER] == "monitor,raises,hangs"
    decisions = sorted((name, decision) for name, stage, decision, _ in recorder.decisions)
    assert decisions == [("hangs", "error"), ("hangs", "error"), ("monitor", "flag"), ("monitor", "flag"),
                         ("raises", "error"), ("raises", "error")]
    assert {stage for _, stage, _, _ in recorder.decisions} == {"logging_only"}


# -- reporting --------------------------------------------------------------------------------------------------


async def test_decisions_and_not_run_are_recorded() -> None:
    recorder = Recorder()
    guard = NoSecrets(guardrail_name="ns", event_hook=["pre_call", "post_call"], default_on=True)
    app, _ = _app(guard, observer=recorder)
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat("s3cr3t"))
        await c.post("/v1/embeddings", json={"model": "m", "input": "fine"})
    assert recorder.decisions == [
        ("ns", "pre_call", "modify", None),
        ("ns", "post_call", "allow", None),
        ("ns", "pre_call", "allow", None),
        ("ns", "post_call", "not_run", "the response has no text"),
    ]


async def test_a_post_call_guardrail_on_an_error_answer_is_recorded_not_run() -> None:
    recorder = Recorder()
    down = Downstream(status=429)
    app = LLMHookMiddleware(down, hooks=[NoSecrets(guardrail_name="ns", event_hook="post_call", default_on=True)],
                            observer=recorder)
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("x"))
    assert r.status_code == 429 and HEADER not in r.headers
    assert recorder.decisions == [("ns", "post_call", "not_run", "the answer was an error (status 429)")]


async def test_call_hooks_of_a_guardrail_are_gated_by_selection() -> None:
    class Legacy(CustomGuardrail):
        async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):  # type: ignore[no-untyped-def]
            data["messages"][0]["content"] = "seen"
            return data

    app, down = _app(Legacy(guardrail_name="legacy", event_hook="pre_call"))
    async with client(app) as c:
        r1 = await c.post("/v1/chat/completions", json=chat("a"))
        r2 = await c.post("/v1/chat/completions", json=chat("a", guardrails=["legacy"]))
    assert down.received[0].json["messages"][0]["content"] == "a" and HEADER not in r1.headers
    assert down.received[1].json["messages"][0]["content"] == "seen" and r2.headers[HEADER] == "legacy"


async def test_no_guardrail_configured_forwards_guardrails_field_removed() -> None:
    app, down = _app()
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat("a", guardrails=["x"]))
    assert "guardrails" not in orjson.loads(down.received[0].body)


async def test_prometheus_observer_counts_guardrail_decisions() -> None:
    from asgi_llm_guard.contrib.prometheus import PrometheusObserver

    observer = PrometheusObserver()
    app, _ = _app(NoSecrets(guardrail_name="ns", event_hook="pre_call", default_on=True), observer=observer)
    async with client(app) as c:
        await c.post("/v1/chat/completions", json=chat("s3cr3t"))
        await c.post("/v1/chat/completions", json=chat("rm -rf"))
    sample = observer.registry.get_sample_value
    assert sample("llm_guard_guardrail_decisions_total",
                  {"guardrail": "ns", "stage": "pre_call", "decision": "modify"}) == 1
    assert sample("llm_guard_guardrail_decisions_total",
                  {"guardrail": "ns", "stage": "pre_call", "decision": "block"}) == 1
    assert sample("llm_guard_guardrail_duration_seconds_count", {"guardrail": "ns", "stage": "pre_call"}) == 2


async def test_the_documented_example_masks_and_blocks() -> None:
    """docs/snippets/guardrail_example.py (shown in docs/guardrails.md and the README), on a route of its own."""
    import runpy
    from pathlib import Path

    namespace = runpy.run_path(str(Path(__file__).resolve().parents[1] / "docs" / "snippets" / "guardrail_example.py"))
    app = namespace["app"]
    seen: list[str] = []

    @app.post("/v1/chat/completions")
    async def completions(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body["messages"][0]["content"])
        return {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "your s3cr3t is safe"},
                             "finish_reason": "stop"}]}

    async with client(app) as c:
        masked = await c.post("/v1/chat/completions", json=chat("my s3cr3t"))
        blocked = await c.post("/v1/chat/completions", json=chat("rm -rf /"))
    assert seen == ["my [REDACTED]"]
    assert masked.json()["choices"][0]["message"]["content"] == "your [REDACTED] is safe"
    assert masked.headers[HEADER] == "no-secrets"
    assert blocked.json()["choices"][0]["message"]["content"] == "I can't help with that."


async def test_audio_form_fields_in_and_the_json_transcription_out() -> None:
    from tests.audio import make_wav
    from tests.test_audio import downstream, form, received

    received.clear()
    guard = NoSecrets(guardrail_name="ns", event_hook=["pre_call", "post_call"], default_on=True)
    wav = make_wav(0.1)
    async with client(LLMHookMiddleware(downstream, hooks=[guard])) as c:
        r = await c.post("/v1/audio/transcriptions", **form(wav, prompt="say s3cr3t"))
    assert r.status_code == 200
    assert received[0]["fields"]["prompt"] == "say [REDACTED]" and received[0]["file"] == wav
    # the app echoes the prompt it got: the answer's text was checked too (nothing left to mask)
    assert r.json() == {"text": "transcribed with prompt 'say [REDACTED]'"}
    assert guard.calls == [("request", ["say s3cr3t"]), ("response", ["transcribed with prompt 'say [REDACTED]'"])]


async def test_should_run_guardrail_override_gets_the_requested_names_and_the_event_type() -> None:
    seen: list[tuple[list[str], str, str]] = []

    class OnlyForTeamModels(NoSecrets):
        def should_run_guardrail(self, data, event_type):  # type: ignore[no-untyped-def]
            seen.append((data["guardrails"], event_type, event_type.value))
            return super().should_run_guardrail(data, event_type) and data.get("model") == "team-model"

    async def auth(scope: Any) -> UserAPIKeyAuth:
        return UserAPIKeyAuth(metadata={"guardrails": ["from-key"]})

    guard = OnlyForTeamModels(guardrail_name="ns", event_hook="pre_call", default_on=True)
    app, down = _app(guard, auth=auth)
    async with client(app) as c:
        await c.post("/v1/chat/completions", json={**chat("s3cr3t", guardrails=["asked"]), "model": "team-model"})
        await c.post("/v1/chat/completions", json={**chat("s3cr3t"), "model": "other"})
    assert [r.json["messages"][0]["content"] for r in down.received] == ["[REDACTED]", "s3cr3t"]
    assert seen[0] == (["asked", "from-key"], "pre_call", "pre_call")


async def test_prompt_pattern_guard_through_the_middleware_masks_tool_call_arguments_too() -> None:
    from asgi_llm_guard.contrib import PromptPatternGuard

    app, down = _app(PromptPatternGuard(deny=[r"s3cr3t"], action="mask"))
    messages = [
        {"role": "user", "content": "use s3cr3t"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"key\": \"s3cr3t\"}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "s3cr3t accepted"},
    ]
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json={"model": "m", "messages": messages})
    assert r.headers[HEADER] == "PromptPatternGuard"
    assert b"s3cr3t" not in down.received[0].body
    forwarded = down.received[0].json["messages"]
    assert forwarded[2]["content"] == "[REDACTED] accepted"
    assert forwarded[1]["tool_calls"][0]["function"]["arguments"] == "{\"key\": \"[REDACTED]\"}"


async def test_anthropic_request_system_and_messages_in_and_metadata_guardrails_not_forwarded() -> None:
    guard = NoSecrets(guardrail_name="ns", event_hook="pre_call")
    app, down = _app(guard)
    body = {
        "model": "claude", "max_tokens": 5, "system": "sys s3cr3t",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi s3cr3t"}]}],
        "metadata": {"user_id": "u-1", "guardrails": ["ns"]},
    }
    async with client(app) as c:
        r = await c.post("/v1/messages", json=body)
    assert r.headers[HEADER] == "ns"
    assert guard.calls == [("request", ["sys s3cr3t", "hi s3cr3t"])]
    forwarded = down.received[0].json
    assert forwarded["system"] == "sys [REDACTED]"
    assert forwarded["messages"][0]["content"][0]["text"] == "hi [REDACTED]"
    assert forwarded["metadata"] == {"user_id": "u-1"}


async def test_anthropic_document_and_search_result_texts_are_request_texts() -> None:
    # Regression: a plain-text document (source "text" or "content") and a search result's text blocks are text the
    # model reads, yet a pre_call guardrail never saw them and they were forwarded unmasked.
    guard = NoSecrets(guardrail_name="ns", event_hook="pre_call", default_on=True)
    app, down = _app(guard)
    content = [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc s3cr3t"}},
        {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "part s3cr3t"}]}},
        {"type": "search_result", "source": "https://x", "title": "t",
         "content": [{"type": "text", "text": "found s3cr3t"}]},
    ]
    body = {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": content}]}
    async with client(app) as c:
        r = await c.post("/v1/messages", json=body)
    assert r.status_code == 200
    assert guard.calls == [("request", ["doc s3cr3t", "part s3cr3t", "found s3cr3t"])]
    sent = down.received[0].json["messages"][0]["content"]
    assert sent[0]["source"]["data"] == "doc [REDACTED]"
    assert sent[1]["source"]["content"][0]["text"] == "part [REDACTED]"
    assert sent[2]["content"][0]["text"] == "found [REDACTED]"


class InPlace(CustomGuardrail):
    """Masks by changing inputs["texts"] in place and returns None."""

    async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
        inputs["texts"][:] = [t.replace("s3cr3t", "[REDACTED]") for t in inputs["texts"]]
        return None


async def test_texts_changed_in_place_with_none_returned_are_the_rewrite() -> None:
    # Regression: the in-place change was dropped (None read as "pass") and the unmasked text went both ways.
    app, down = _app(InPlace(guardrail_name="ip", default_on=True), words=("the ", "s3cr3t"))
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=chat("my s3cr3t key"))
    assert r.status_code == 200
    assert down.received[0].json["messages"][0]["content"] == "my [REDACTED] key"
    assert r.json()["choices"][0]["message"]["content"] == "the [REDACTED]"
