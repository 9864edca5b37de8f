"""Audio uploads: multipart forms on /audio/transcriptions and /audio/translations
(docs/reference.md#guarded-requests)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_llm_guard import LLMHookMiddleware

from .apps import client
from .audio import make_wav

received: list[dict[str, Any]] = []


async def transcribe(request: Request) -> JSONResponse:
    async with request.form() as form:
        upload: Any = form["file"]
        received.append({"fields": {k: v for k, v in form.multi_items() if isinstance(v, str)},
                         "file": await upload.read(), "filename": upload.filename,
                         "content_type": request.headers["content-type"]})
        return JSONResponse({"text": f"transcribed with prompt {form.get('prompt')!r}"})


downstream = Starlette(routes=[Route(p, transcribe, methods=["POST"]) for p in
                              ("/v1/audio/transcriptions", "/v1/audio/translations", "/v1/chat/completions")])


class RewritePrompt:
    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, Any], str]] = []

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        self.seen.append((dict(data), call_type))
        data["prompt"] = "Vocabulary: asgi, guard."
        data["language"] = "en"
        return data


def form(wav: bytes, **fields: Any) -> dict[str, Any]:
    return {"files": {"file": ("speech.wav", wav, "audio/wav")},
            "data": {"model": "whisper-1", "prompt": "original", **fields}}


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
async def test_hooks_see_fields_and_file_and_the_app_gets_edited_fields_with_the_same_bytes(path: str) -> None:
    received.clear()
    hook = RewritePrompt()
    wav = make_wav(0.2)
    async with client(LLMHookMiddleware(downstream, hooks=[hook])) as c:
        response = await c.post(path, **form(wav, temperature="0.2"))
    assert response.status_code == 200
    data, call_type = hook.seen[0]
    assert call_type == "audio_transcription"
    assert data == {"model": "whisper-1", "prompt": "original", "temperature": "0.2",
                    "file": {"filename": "speech.wav", "content_type": "audio/wav", "size": len(wav)}}
    got = received[0]
    assert got["fields"] == {"model": "whisper-1", "prompt": "Vocabulary: asgi, guard.", "temperature": "0.2",
                             "language": "en"}
    assert got["file"] == wav and got["filename"] == "speech.wav"
    assert got["content_type"].startswith("multipart/form-data; boundary=")


async def test_refused_upload_never_reaches_the_app() -> None:
    received.clear()

    class Refuse:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            return "no transcriptions today"

    async with client(LLMHookMiddleware(downstream, hooks=[Refuse()])) as c:
        response = await c.post("/v1/audio/transcriptions", **form(make_wav()))
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "no transcriptions today"
    assert received == []


async def test_malformed_form_is_a_400() -> None:
    received.clear()
    async with client(LLMHookMiddleware(downstream, hooks=[RewritePrompt()])) as c:
        response = await c.post("/v1/audio/transcriptions", content=b"--xyz\r\nContent-Disposition: form-da",
                                headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert received == []


async def test_upload_over_the_body_limit_is_a_413() -> None:
    async with client(LLMHookMiddleware(downstream, hooks=[RewritePrompt()], max_body_bytes=2000)) as c:
        response = await c.post("/v1/audio/transcriptions", **form(make_wav(0.5)))
    assert response.status_code == 413


async def test_multipart_on_a_json_route_is_a_400_not_a_bypass() -> None:
    received.clear()
    async with client(LLMHookMiddleware(downstream, hooks=[RewritePrompt()])) as c:
        response = await c.post("/v1/chat/completions", **form(make_wav()))
    assert response.status_code == 400
    assert received == []


async def test_json_body_on_the_audio_route_is_still_parsed_as_json() -> None:
    hook = RewritePrompt()

    async def echo(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": message["body"]})

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=LLMHookMiddleware(echo, hooks=[hook])),
                                 base_url="http://t") as c:
        response = await c.post("/v1/audio/transcriptions", json={"model": "whisper-1", "prompt": "p"})
    assert response.json()["prompt"] == "Vocabulary: asgi, guard."


def tiny_fields(count: int) -> tuple[bytes, str]:
    """A form of ``count`` one-byte text fields (plus a model), as tightly framed as multipart allows."""
    part = b'--b\r\nContent-Disposition:form-data;name="f"\r\n\r\nx\r\n'
    model = b'--b\r\nContent-Disposition:form-data;name="model"\r\n\r\nwhisper-1\r\n'
    return model + part * count + b"--b--\r\n", "multipart/form-data; boundary=b"


async def test_a_form_of_190000_one_byte_fields_is_a_quick_400() -> None:
    # Regression: a 10 MiB form of ~190,000 one-byte fields (under max_body_bytes) cost seconds of event-loop
    # CPU and reached the app re-encoded at about twice max_body_bytes. Starlette's limit applies: 1,000 fields.
    received.clear()
    body, content_type = tiny_fields(190_000)
    assert len(body) < 10 * 1024 * 1024
    async with client(LLMHookMiddleware(downstream, hooks=[RewritePrompt()])) as c:
        started = time.process_time()
        response = await c.post("/v1/audio/transcriptions", content=body, headers={"content-type": content_type})
        took = time.process_time() - started
    assert response.status_code == 400
    assert response.json() == {"error": {
        "message": "the multipart/form-data body has too many text fields: at most 1000 are accepted",
        "type": "invalid_request_error", "param": None, "code": "400"}}  # fmt: skip
    assert took < 1.0  # about 0.1 s (mostly the client); 3 s or more before
    assert received == []


async def test_the_form_the_app_receives_is_never_over_max_body_bytes() -> None:
    # 1,000 one-byte fields framed more tightly than the form is re-encoded (a longer boundary and header)
    received.clear()
    body, content_type = tiny_fields(999)
    limit = len(body) + 100
    async with client(LLMHookMiddleware(downstream, max_body_bytes=limit)) as c:
        response = await c.post("/v1/audio/transcriptions", content=body, headers={"content-type": content_type})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "413"
    assert error["message"].startswith("Request body as forwarded to the app would be ")
    assert error["message"].endswith(f" bytes, larger than the limit of {limit} bytes.")
    assert received == []


async def test_a_hook_that_lengthens_a_form_past_max_body_bytes_is_a_413() -> None:
    received.clear()

    class LongPrompt:
        async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
            data["prompt"] = "x" * 60_000
            return data

    async with client(LLMHookMiddleware(downstream, hooks=[LongPrompt()], max_body_bytes=50_000)) as c:
        response = await c.post("/v1/audio/transcriptions", **form(make_wav(0.1)))
    assert response.status_code == 413
    assert received == []


# -- without python-multipart (the [multipart] extra) -------------------------------------------------------------

AUDIO_ROUTES_OFF = {
    "/audio/transcriptions": None,
    "/audio/translations": None,
    "/openai/deployments/{deployment}/audio/transcriptions": None,
    "/openai/deployments/{deployment}/audio/translations": None,
}


@pytest.fixture
def no_multipart(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if python-multipart were not installed: importing it fails, as it would."""
    for name in ("python_multipart", "python_multipart.multipart"):
        monkeypatch.setitem(sys.modules, name, None)


def test_without_python_multipart_construction_warns_with_the_fix(
    no_multipart: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asgi_llm_guard")
    LLMHookMiddleware(downstream, hooks=[RewritePrompt()])
    (record,) = [r for r in caplog.records if r.name == "asgi_llm_guard"]
    assert record.levelno == logging.WARNING
    assert "pip install 'asgi-llm-guard[multipart]'" in record.getMessage()
    assert "routes={'/audio/transcriptions': None" in record.getMessage()


def test_without_python_multipart_and_no_audio_route_nothing_is_logged(
    no_multipart: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asgi_llm_guard")
    LLMHookMiddleware(downstream, hooks=[RewritePrompt()], routes=AUDIO_ROUTES_OFF)
    assert [r for r in caplog.records if r.name == "asgi_llm_guard"] == []


async def test_without_python_multipart_an_upload_is_a_501_json_error_never_unguarded(no_multipart: None) -> None:
    """Regression: it was a plain-text 500 from an ImportError raised in the middle of the request."""
    hook = RewritePrompt()
    received.clear()
    async with client(LLMHookMiddleware(downstream, hooks=[hook])) as http:
        response = await http.post("/v1/audio/transcriptions", **form(make_wav()))
    assert response.status_code == 501
    assert response.json() == {
        "error": {
            "message": "This service cannot read multipart/form-data uploads.",
            "type": "internal_server_error",
            "param": None,
            "code": "501",
        }
    }
    assert hook.seen == [] and received == []  # neither the hooks nor the app saw an unchecked upload


async def test_without_python_multipart_json_on_the_audio_route_still_works(no_multipart: None) -> None:
    hook = RewritePrompt()
    async with client(LLMHookMiddleware(downstream, hooks=[hook])) as http:
        response = await http.post("/v1/audio/transcriptions", json={"model": "whisper-1", "prompt": "hi"})
    assert response.status_code != 501  # the downstream here only reads forms: what it answers is its own
    assert hook.seen == [({"model": "whisper-1", "prompt": "hi"}, "audio_transcription")]
