"""No output fail-open: an answer a post-call or streaming hook is configured to see is seen by it, or replaced by an
error; never delivered unchecked.

The ``openai`` SDK parses a JSON body whatever its label (``text/plain``, none, a BOM first, ``NaN`` or
``-Infinity`` in it, which Python's ``json.dumps`` writes) and reads an event stream whatever its label; each
such answer used to skip the hooks (a warning at most) and reach the client unredacted. The SDK's own view of
these answers is checked over a real server in ``tests/integration/test_output_checked_sdk.py``.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from asgi_llm_guard import CustomGuardrail, LLMHookMiddleware
from asgi_llm_guard.observe import Observer
from asgi_llm_guard.sse import SSEParser

from .apps import Script, body_messages, chat, chat_chunk, chat_completion, http_scope, receive_body, sse
from .asgi_checks import Failures, assert_legal, assert_openai_error

SECRET = "the secret is 1234"
ANSWER = chat_completion("m", SECRET)
ANSWER["choices"][0]["logprobs"] = {"content": [{"token": "the", "logprob": -math.inf, "bytes": None,
                                                 "top_logprobs": []}]}
PY_JSON = json.dumps(ANSWER).encode()  # what a Python app writes: -Infinity, spaces after separators
STREAM_EVENTS = sse([chat_chunk("m", "the secret"), chat_chunk("m", " is 1234"), chat_chunk("m", None, "stop")])
STREAM = b"".join(STREAM_EVENTS)


class Redact:
    """A post-call hook and a per-chunk hook that redact the digits; records what each saw."""

    def __init__(self) -> None:
        self.success: list[Any] = []
        self.chunks: list[dict[str, Any]] = []

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        self.success.append(response)
        if isinstance(response, dict) and "text" in response and "choices" not in response:
            response["text"] = response["text"].replace("1234", "[REDACTED]")
            return None
        return orjson.loads(orjson.dumps(response).replace(b"1234", b"[REDACTED]"))

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.chunks.append(response)
        for choice in response.get("choices", []):
            delta = choice.get("delta", {})
            if isinstance(delta.get("content"), str):
                delta["content"] = delta["content"].replace("1234", "[REDACTED]")
        return response


class SuccessOnly:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        self.seen.append(response)
        return None


class ChunksOnly:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
        self.seen.append(response)
        for choice in response.get("choices", []):
            delta = choice.get("delta", {})
            if isinstance(delta.get("content"), str):
                delta["content"] = delta["content"].replace("1234", "[REDACTED]")
        return response


class Window:
    """An iterator hook that redacts across chunk boundaries (it holds the whole stream)."""

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: AsyncIterator[dict], request_data: dict
    ) -> AsyncIterator[dict]:
        async for chunk in response:
            for choice in chunk.get("choices", []):
                delta = choice.get("delta", {})
                if isinstance(delta.get("content"), str):
                    delta["content"] = delta["content"].replace("1234", "[REDACTED]")
            yield chunk


def app_answering(body: bytes | list[bytes], headers: list[tuple[bytes, bytes]], status: int = 200) -> Any:
    pieces = [body] if isinstance(body, bytes) else body

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive_body(receive)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for index, piece in enumerate(pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": index < len(pieces) - 1})

    return app


async def drive(app: Any, request: dict[str, Any], path: str = "/v1/chat/completions",
                headers: list[tuple[bytes, bytes]] | None = None, raw: bytes | None = None) -> Script:
    script = Script(body_messages(raw if raw is not None else orjson.dumps(request)))
    await app(http_scope(path, headers=headers), script.receive, script.send)
    assert_legal(script.sent)
    return script


JSON = (b"content-type", b"application/json")
PLAIN = (b"content-type", b"text/plain; charset=utf-8")
BOM = b"\xef\xbb\xbf"

JSON_ANSWERS = {
    "minus-infinity": (PY_JSON, [JSON]),
    "nan": (PY_JSON.replace(b"-Infinity", b"NaN"), [JSON]),
    "bom": (BOM + orjson.dumps(ANSWER), [JSON]),
    "labelled-text-plain": (orjson.dumps(ANSWER), [PLAIN]),
    "no-content-type": (orjson.dumps(ANSWER), []),
    "labelled-event-stream": (orjson.dumps(ANSWER), [(b"content-type", b"text/event-stream")]),
    "bom-infinity-plain-whitespace": (BOM + b"\n  " + PY_JSON, [PLAIN]),
}


@pytest.mark.parametrize("case", JSON_ANSWERS)
@pytest.mark.parametrize("split", [False, True], ids=["one-message", "byte-by-byte"])
async def test_json_answers_the_sdk_parses_go_through_the_success_hook(case: str, split: bool) -> None:
    raw, headers = JSON_ANSWERS[case]
    hook = Redact()
    pieces = [raw[i : i + 1] for i in range(len(raw))] if split else raw
    script = await drive(LLMHookMiddleware(app_answering(pieces, headers), hooks=[hook]), chat())
    assert script.status == 200
    assert b"1234" not in script.body
    assert len(hook.success) == 1 and hook.success[0]["choices"][0]["message"]["content"] == SECRET
    parsed = json.loads(script.body)  # the SDK's parser
    assert parsed["choices"][0]["message"]["content"] == "the secret is [REDACTED]"
    sent_headers = dict(script.sent[0]["headers"])
    assert sent_headers[b"content-length"] == str(len(script.body)).encode()


async def test_infinities_and_nan_are_written_back_as_the_app_wrote_them() -> None:
    answer = {**ANSWER, "extra": [math.nan, math.inf]}
    hook = SuccessOnly()
    script = await drive(LLMHookMiddleware(app_answering(json.dumps(answer).encode(), [JSON]), hooks=[hook]), chat())
    parsed = json.loads(script.body)
    assert parsed["choices"][0]["logprobs"]["content"][0]["logprob"] == -math.inf
    assert math.isnan(parsed["extra"][0]) and parsed["extra"][1] == math.inf
    assert hook.seen[0]["choices"][0]["logprobs"]["content"][0]["logprob"] == -math.inf


UNREADABLE = {
    "image-bytes": (b"\x89PNG\r\n\x1a\n\x00\x00", [(b"content-type", b"image/png")]),
    "plain-text": (SECRET.encode(), [PLAIN]),
    "json-string": (orjson.dumps(SECRET), [JSON]),
    "ndjson": (orjson.dumps(ANSWER) + b"\n" + orjson.dumps(ANSWER) + b"\n",
               [(b"content-type", b"application/x-ndjson")]),
    "truncated-json": (orjson.dumps(ANSWER)[:-5], [JSON]),
    "brotli": (b"\x1b\x00\x00", [JSON, (b"content-encoding", b"br")]),
    "broken-gzip": (gzip.compress(orjson.dumps(ANSWER))[:-8] + b"garbage!", [JSON, (b"content-encoding", b"gzip")]),
}


@pytest.mark.parametrize("case", UNREADABLE)
async def test_answers_the_success_hook_cannot_read_are_a_502(case: str) -> None:
    raw, headers = UNREADABLE[case]
    hook, failures = SuccessOnly(), Failures()
    script = await drive(LLMHookMiddleware(app_answering(raw, headers), hooks=[hook, failures]), chat())
    assert script.status == 502
    error = assert_openai_error(script.body, 502)
    assert error["message"].startswith("The downstream app's response could not be checked")
    assert b"1234" not in script.body
    assert hook.seen == []
    assert [getattr(e, "status_code", None) for e in failures.exceptions] == [502]


async def test_an_empty_answer_passes() -> None:
    hook = SuccessOnly()
    script = await drive(LLMHookMiddleware(app_answering(b"", [JSON]), hooks=[hook]), chat())
    assert (script.status, script.body) == (200, b"")


async def test_a_gzip_json_answer_labelled_text_plain_is_decoded_for_the_hook() -> None:
    hook = Redact()
    app = app_answering(gzip.compress(orjson.dumps(ANSWER)), [PLAIN, (b"content-encoding", b"gzip")])
    script = await drive(LLMHookMiddleware(app, hooks=[hook]), chat())
    assert script.status == 200 and b"[REDACTED]" in script.body and b"1234" not in script.body


async def test_success_hooks_alone_leave_a_requested_stream_alone() -> None:
    """Success hooks read no streams (docs/reference.md#hooks): a requested stream passes as today, bytes unchanged."""
    hook = SuccessOnly()
    script = await drive(LLMHookMiddleware(app_answering(STREAM_EVENTS, [PLAIN]), hooks=[hook]), chat(stream=True))
    assert script.body == STREAM and hook.seen == []


# -- audio transcriptions: text answers ---------------------------------------------------------------------------

AUDIO_FORM = (
    b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
    b"--b\r\nContent-Disposition: form-data; name=\"response_format\"\r\n\r\ntext\r\n"
    b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
    b"RIFF....\r\n--b--\r\n"
)
AUDIO_HEADERS = [(b"content-type", b"multipart/form-data; boundary=b")]
SRT = b"1\n00:00:00,000 --> 00:00:01,000\nthe secret is 1234\n"


VTT = b"WEBVTT\n\n00:00.000 --> 00:01.000\n" + SECRET.encode()


@pytest.mark.parametrize("answer", [SECRET.encode() + b"\n", SRT, VTT], ids=["text", "srt", "vtt"])
async def test_a_text_transcription_is_seen_by_the_success_hook_as_text(answer: bytes) -> None:
    hook = Redact()
    app = LLMHookMiddleware(app_answering(answer, [PLAIN]), hooks=[hook])
    script = await drive(app, {}, path="/v1/audio/transcriptions", headers=AUDIO_HEADERS, raw=AUDIO_FORM)
    assert script.status == 200
    assert hook.success == [{"text": answer.decode().replace("1234", "[REDACTED]")}]  # the dict it edited in place
    assert script.body == answer.replace(b"1234", b"[REDACTED]")
    assert dict(script.sent[0]["headers"])[b"content-type"] == PLAIN[1]


async def test_a_json_transcription_is_seen_as_json() -> None:
    hook = SuccessOnly()
    app = LLMHookMiddleware(app_answering(b'{"text": "hi"}', [JSON]), hooks=[hook])
    script = await drive(app, {}, path="/v1/audio/transcriptions", headers=AUDIO_HEADERS, raw=AUDIO_FORM)
    assert script.status == 200 and hook.seen == [{"text": "hi"}]


async def test_a_binary_transcription_answer_is_a_502() -> None:
    hook = SuccessOnly()
    app = LLMHookMiddleware(app_answering(b"\xff\xfe\x00binary", [(b"content-type", b"audio/wav")]), hooks=[hook])
    script = await drive(app, {}, path="/v1/audio/transcriptions", headers=AUDIO_HEADERS, raw=AUDIO_FORM)
    assert script.status == 502 and hook.seen == []


# -- streams, whatever their label ---------------------------------------------------------------------------------

STREAM_LABELS = {
    "text-plain": [PLAIN],
    "x-ndjson": [(b"content-type", b"application/x-ndjson")],
    "none": [],
    "application-json": [JSON],
    "event-stream": [(b"content-type", b"text/event-stream")],
}


def chunk_contents(body: bytes) -> list[str]:
    out = []
    for event in SSEParser().feed(body):
        if event.data is not None and not event.is_done:
            out.append(json.loads(event.data)["choices"][0]["delta"].get("content", ""))
    return out


@pytest.mark.parametrize("label", STREAM_LABELS)
@pytest.mark.parametrize("hook_kind", ["per-chunk", "iterator"])
@pytest.mark.parametrize("requested", [True, False], ids=["stream-requested", "stream-not-requested"])
async def test_a_stream_is_parsed_for_the_streaming_hooks_whatever_its_label(
    label: str, hook_kind: str, requested: bool
) -> None:
    hook: Any = ChunksOnly() if hook_kind == "per-chunk" else Window()
    app = LLMHookMiddleware(app_answering([*STREAM_EVENTS, b""], STREAM_LABELS[label]), hooks=[hook])
    script = await drive(app, chat(stream=requested))
    assert script.status == 200
    assert b"1234" not in script.body
    assert chunk_contents(script.body) == ["the secret", " is [REDACTED]", ""]
    assert script.body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("first", [BOM, b"\n", b": keep-alive\n\n", b"event: chunk\n", b"da", b"retry: 5\n"])
async def test_a_stream_is_recognised_from_its_first_bytes_split_anywhere(first: bytes) -> None:
    hook = ChunksOnly()
    app = LLMHookMiddleware(app_answering([first, *STREAM_EVENTS, b""] if first != b"da" else
                                          [b"da", STREAM[2:], b""], [PLAIN]), hooks=[hook])
    script = await drive(app, chat(stream=False))
    assert b"1234" not in script.body
    assert len(hook.seen) == 3


async def test_a_stream_chunk_with_infinity_is_seen_by_the_hook_and_kept() -> None:
    chunk = chat_chunk("m", "the secret is 1234")
    chunk["choices"][0]["logprobs"] = {"content": [{"token": "x", "logprob": -math.inf}]}
    events = [b"data: " + json.dumps(chunk).encode() + b"\n\n", b"data: [DONE]\n\n"]
    for hooks in ([ChunksOnly()], [Window()]):
        script = await drive(LLMHookMiddleware(app_answering([*events, b""], [(b"content-type", b"text/event-stream")]),
                                               hooks=hooks), chat(stream=True))
        payloads = [json.loads(e.data) for e in SSEParser().feed(script.body) if not e.is_done]
        assert payloads[0]["choices"][0]["delta"]["content"] == "the secret is [REDACTED]"
        assert payloads[0]["choices"][0]["logprobs"]["content"][0]["logprob"] == -math.inf


async def test_a_compressed_stream_the_streaming_hooks_cannot_read_is_a_502() -> None:
    app = app_answering([gzip.compress(STREAM), b""], [(b"content-type", b"text/event-stream"),
                                                        (b"content-encoding", b"gzip")])
    script = await drive(LLMHookMiddleware(app, hooks=[ChunksOnly()]), chat(stream=True))
    assert script.status == 502


async def test_a_non_stream_json_answer_with_only_streaming_hooks_passes() -> None:
    """Streaming hooks read streams; a JSON answer to a request that asked for none is not theirs
    (docs/reference.md#hooks)."""
    hook = ChunksOnly()
    raw = orjson.dumps(ANSWER)
    script = await drive(LLMHookMiddleware(app_answering(raw, [PLAIN]), hooks=[hook]), chat())
    assert script.body == raw and hook.seen == []


# -- guardrails ----------------------------------------------------------------------------------------------------


class Masks(CustomGuardrail):
    async def apply_guardrail(self, inputs, request_data, input_type, logging_obj=None):  # type: ignore[no-untyped-def]
        return {**inputs, "texts": [text.replace("1234", "[REDACTED]") for text in inputs["texts"]]}


class Decisions(Observer):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, str | None]] = []

    def guardrail_finished(self, guardrail: str, stage: str, decision: str, seconds: float, reason: str | None) -> None:
        self.seen.append((guardrail, stage, decision, reason))


@pytest.mark.parametrize("case", ["labelled-text-plain", "bom", "minus-infinity"])
async def test_a_post_call_guardrail_masks_json_answers_whatever_their_label(case: str) -> None:
    raw, headers = JSON_ANSWERS[case]
    guard = Masks(guardrail_name="mask", event_hook="post_call", default_on=True)
    script = await drive(LLMHookMiddleware(app_answering(raw, headers), hooks=[guard]), chat())
    assert script.status == 200 and b"1234" not in script.body
    assert json.loads(script.body)["choices"][0]["message"]["content"] == "the secret is [REDACTED]"


async def test_a_post_call_guardrail_masks_a_mislabelled_stream() -> None:
    guard = Masks(guardrail_name="mask", event_hook="post_call", default_on=True)
    app = LLMHookMiddleware(app_answering([*STREAM_EVENTS, b""], [PLAIN]), hooks=[guard])
    script = await drive(app, chat(stream=True))
    assert b"1234" not in script.body and "".join(chunk_contents(script.body)).endswith("[REDACTED]")


async def test_an_answer_a_post_call_guardrail_cannot_read_is_a_502() -> None:
    guard = Masks(guardrail_name="mask", event_hook="post_call", default_on=True)
    script = await drive(LLMHookMiddleware(app_answering(SECRET.encode(), [PLAIN]), hooks=[guard]), chat())
    assert script.status == 502 and b"1234" not in script.body


async def test_an_answer_a_logging_only_guardrail_cannot_read_passes_and_is_recorded_not_run() -> None:
    """A monitor never blocks (docs/reference.md#guardrails): what it cannot read goes on, and its decision says it did
    not run."""
    decisions = Decisions()
    monitor = Masks(guardrail_name="monitor", event_hook="logging_only", default_on=True)
    app = LLMHookMiddleware(app_answering(SECRET.encode(), [PLAIN]), hooks=[monitor], observer=decisions)
    script = await drive(app, chat())
    assert (script.status, script.body) == (200, SECRET.encode())
    assert ("monitor", "logging_only", "not_run") in [seen[:3] for seen in decisions.seen]


# -- bodies the server would send itself -----------------------------------------------------------------------


async def test_the_app_is_not_offered_pathsend_when_a_hook_reads_the_answer(tmp_path: Any) -> None:
    """Starlette's FileResponse sends `http.response.pathsend` when the server offers it (granian does): the
    server would then send the file, past every hook. The app is not offered it, so it sends body messages."""
    from starlette.responses import FileResponse

    answer = tmp_path / "answer.json"
    answer.write_bytes(orjson.dumps(ANSWER))
    offered: list[Any] = []

    async def files(scope: Any, receive: Any, send: Any) -> None:
        offered.append(dict(scope.get("extensions", {})))
        await receive_body(receive)
        await FileResponse(answer, media_type="application/json")(scope, receive, send)

    hook = Redact()
    scope = http_scope()
    scope["extensions"] = {"http.response.pathsend": {}, "http.response.early_hint": {}}
    script = Script(body_messages(orjson.dumps(chat())))
    await LLMHookMiddleware(files, hooks=[hook])(scope, script.receive, script.send)
    assert_legal(script.sent)
    assert offered == [{"http.response.early_hint": {}}]
    assert b"1234" not in script.body and len(hook.success) == 1


async def test_a_pathsend_a_hook_cannot_read_is_a_502() -> None:
    async def sends_a_file(scope: Any, receive: Any, send: Any) -> None:
        await receive_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": [JSON]})
        await send({"type": "http.response.pathsend", "path": "/etc/hostname"})

    script = await drive(LLMHookMiddleware(sends_a_file, hooks=[SuccessOnly()]), chat())
    assert script.status == 502
    assert all(message["type"] != "http.response.pathsend" for message in script.sent)


async def test_a_post_call_guardrail_masks_a_text_transcription() -> None:
    decisions = Decisions()
    guard = Masks(guardrail_name="mask", event_hook="post_call", default_on=True)
    app = LLMHookMiddleware(app_answering(b"the secret is 1234\n", [PLAIN]), hooks=[guard], observer=decisions)
    script = await drive(app, {}, path="/v1/audio/transcriptions", headers=AUDIO_HEADERS, raw=AUDIO_FORM)
    assert (script.status, script.body) == (200, b"the secret is [REDACTED]\n")
    assert decisions.seen == [("mask", "post_call", "modify", None)]


async def test_a_stream_answering_a_request_for_one_answer_is_a_502_for_the_success_hook() -> None:
    """The openai SDK hands a stream it did not ask for to its caller as text: unchecked unless it is a 502."""
    hook = SuccessOnly()
    app = LLMHookMiddleware(app_answering([*STREAM_EVENTS, b""], [(b"content-type", b"text/event-stream")]),
                            hooks=[hook])
    script = await drive(app, chat())
    assert script.status == 502 and b"1234" not in script.body and hook.seen == []


STREAMED_AUDIO_FORM = AUDIO_FORM.replace(b'name="response_format"\r\n\r\ntext', b'name="stream"\r\n\r\ntrue')
TRANSCRIPT_EVENTS = [b'data: {"type":"transcript.text.delta","delta":"the secret is 1234"}\n\n',
                     b'data: {"type":"transcript.text.done","text":"the secret is 1234"}\n\n']


async def test_a_streamed_transcription_asked_for_in_the_form_passes_the_success_hook() -> None:
    """`stream=true` as a form field asks for a stream: success hooks read no streams (docs/reference.md#hooks), no
    502."""
    app = LLMHookMiddleware(app_answering([*TRANSCRIPT_EVENTS, b""], [(b"content-type", b"text/event-stream")]),
                            hooks=[SuccessOnly()])
    script = await drive(app, {}, path="/v1/audio/transcriptions", headers=AUDIO_HEADERS, raw=STREAMED_AUDIO_FORM)
    assert (script.status, script.body) == (200, b"".join(TRANSCRIPT_EVENTS))


async def test_a_streamed_transcription_reaches_the_streaming_hook() -> None:
    seen: list[dict[str, Any]] = []

    class Chunks:
        async def async_post_call_streaming_hook(self, user_api_key_dict: Any, response: dict) -> Any:
            seen.append(response)
            return {key: value.replace("1234", "[REDACTED]") if isinstance(value, str) else value
                    for key, value in response.items()}

    app = LLMHookMiddleware(app_answering([*TRANSCRIPT_EVENTS, b""], [PLAIN]), hooks=[Chunks()])
    script = await drive(app, {}, path="/v1/audio/transcriptions", headers=AUDIO_HEADERS, raw=STREAMED_AUDIO_FORM)
    assert script.status == 200 and b"1234" not in script.body and len(seen) == 2


async def test_the_502_is_in_the_routes_own_format() -> None:
    """On Anthropic's Messages route the error is Anthropic's envelope (docs/reference.md#anthropic-messages), with the
    stage header."""
    request = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    app = LLMHookMiddleware(app_answering(SECRET.encode(), [PLAIN]), hooks=[SuccessOnly()])
    script = await drive(app, request, path="/v1/messages")
    assert script.status == 502
    assert json.loads(script.body)["type"] == "error"
    assert json.loads(script.body)["error"]["type"] == "api_error"
    assert dict(script.sent[0]["headers"])[b"x-llm-guard-rejected"] == b"post_call"


async def test_a_bom_after_an_empty_first_message_is_still_a_bom() -> None:
    """Found by tests/test_output_properties.py: an empty first body message made the BOM after it count as text
    (a 502 for a JSON answer the SDK parses)."""
    hook = Redact()
    app = app_answering([b"", BOM + orjson.dumps(ANSWER)], [JSON])
    script = await drive(LLMHookMiddleware(app, hooks=[hook]), chat())
    assert script.status == 200 and len(hook.success) == 1 and b"1234" not in script.body


@pytest.mark.parametrize("case", ["labelled-event-stream", "no-content-type", "bom"])
async def test_a_json_answer_to_a_streamed_request_goes_through_the_post_call_guardrail(case: str) -> None:
    # Regression: with a post_call guardrail (a success and a streaming hook) and "stream": true, the answer went
    # straight to the stream parser, which finds no events in a JSON body and passed it on unmasked (a downstream
    # that ignores `stream` answers this way; a raw HTTP client reads it).
    raw, headers = JSON_ANSWERS[case]
    guard = Masks(guardrail_name="mask", event_hook="post_call", default_on=True)
    script = await drive(LLMHookMiddleware(app_answering(raw, headers), hooks=[guard]), chat(stream=True))
    assert script.status == 200 and b"1234" not in script.body
    assert json.loads(script.body.removeprefix(BOM))["choices"][0]["message"]["content"] == "the secret is [REDACTED]"


async def test_a_json_answer_to_a_streamed_request_goes_through_the_success_hook() -> None:
    hook = Redact()
    app = LLMHookMiddleware(app_answering(orjson.dumps(ANSWER), [JSON]), hooks=[hook])
    script = await drive(app, chat(stream=True))
    assert len(hook.success) == 1 and hook.chunks == []
    assert b"1234" not in script.body and b"[REDACTED]" in script.body
