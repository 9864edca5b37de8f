"""The bypass matrix (docs/reference.md#guarded-requests): can a request reach a guarded handler without its hooks, or
with a body the hooks did not see?

Every case goes over a raw socket (so lying ``Content-Length``s, raw path bytes, chunked bodies and invalid UTF-8
reach the server as written) to a real server (uvicorn and hypercorn) in front of a FastAPI and a Starlette app.
Both apps are as lenient as a real deployment can be: explicit OpenAI routes (FastAPI parsing the body itself) and
a custom ``{tenant}`` route the guard is configured for,
the same routes under a ``Mount("/api")``, a catch-all that normalises the path the way a forgiving router or
proxy would (case, repeated and trailing slashes, dot segments, ``/v1`` or not, Azure deployment paths), and a
method-override middleware inside the guard. Every handler that does LLM work records exactly what it received.

For each case, one of:

- *hooked*: the pre-call hook ran once and the app received exactly the hook's final ``data`` (compared as the
  app parsed it, and as ``request.state.llm_guard.data``);
- *refused*: the client got a clear OpenAI-shaped error (400/413/415) and neither hooks nor app saw anything;

and always: nothing the app did LLM work on went around the hook.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from fastapi import APIRouter, Body, FastAPI, Request
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from asgi_llm_guard import LLMHookMiddleware
from tests.apps import Script, body_messages, chat, http_scope, receive_body
from tests.servers import SERVERS

LIMIT = 64 * 1024
OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")
LLM_ENDPOINTS = {
    ("chat", "completions"),
    ("completions",),
    ("embeddings",),
    ("responses",),
    ("moderations",),
    ("images", "generations"),
}


# -- what hooks and apps saw ------------------------------------------------------------------------------------


@dataclass
class AppSeen:
    kind: str  # "llm": the handler did LLM work with the body; "list": GET /chat/completions (stored completions)
    method: str
    path: str
    raw: bytes
    parsed: Any
    guard_data: str | None  # request.state.llm_guard.data as JSON, when the guard forwarded the request


@dataclass
class Recorder:
    """The pre-call hook (marks and records ``data``) and the record of what the apps' handlers received."""

    hooked: list[tuple[str, str]] = field(default_factory=list)  # (call_type, json of the final data)
    app: list[AppSeen] = field(default_factory=list)

    def reset(self) -> None:
        self.hooked.clear()
        self.app.clear()

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> None:
        data["_guard_token"] = f"hook-{len(self.hooked) + 1}"
        # stdlib json: orjson.dumps stops at 255 levels, and the hook must not be what fails on deep bodies
        self.hooked.append((call_type, json.dumps(data)))


def lenient_endpoint(path: str) -> tuple[str, ...] | None:
    """The OpenAI endpoint a forgiving router would dispatch ``path`` to: case-insensitive, empty and ``.``
    segments dropped, ``..`` resolved, an ``/api`` mount and ``/v1`` optional, Azure ``/openai/deployments/x/``."""
    segments: list[str] = []
    for segment in path.lower().split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    if segments[:1] == ["api"]:
        segments = segments[1:]
    if segments[:1] == ["v1"]:
        segments = segments[1:]
    if segments[:2] == ["openai", "deployments"] and len(segments) > 3:
        segments = segments[3:]
    elif segments[:1] == ["openai"]:
        segments = segments[1:]
    endpoint = tuple(segments)
    return endpoint if endpoint in LLM_ENDPOINTS else None


def guard_data(scope: dict[str, Any]) -> str | None:
    state = scope.get("state") or {}
    guard = state.get("llm_guard")
    return json.dumps(guard.data) if guard is not None else None


async def record_llm(recorder: Recorder, request: StarletteRequest, parsed: Any = None) -> Response:
    raw = await request.body()
    if parsed is None:
        try:
            parsed = json.loads(raw)  # what Starlette's request.json() does; the app is happy with any JSON
        except ValueError:
            parsed = None
    recorder.app.append(AppSeen("llm", request.method, request.url.path, raw, parsed, guard_data(request.scope)))
    return JSONResponse({"object": "chat.completion", "model": "downstream", "choices": []})


def record_list(recorder: Recorder, request: StarletteRequest) -> Response:
    recorder.app.append(AppSeen("list", request.method, request.url.path, b"", None, guard_data(request.scope)))
    return JSONResponse({"object": "list", "data": []})


async def lenient(recorder: Recorder, request: StarletteRequest) -> Response:
    endpoint = lenient_endpoint(request.url.path)
    if endpoint is None:
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    if request.method == "POST":
        return await record_llm(recorder, request)
    if request.method == "GET" and endpoint == ("chat", "completions"):
        return record_list(recorder, request)
    return JSONResponse({"detail": "Method Not Allowed"}, status_code=405)


class MethodOverride:
    """Honours ``X-HTTP-Method-Override`` / ``X-HTTP-Method`` / ``X-Method-Override`` on any request, as several
    frameworks' method-override middlewares do. It sits inside the guard, as an app's own middleware does."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name in (b"x-http-method-override", b"x-http-method", b"x-method-override"):
                    scope = {**scope, "method": value.decode("latin-1").strip().upper()}
                    break
        await self.app(scope, receive, send)


ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
EXPLICIT_POST = [
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
    "/v1/images/generations",
    "/openai/deployments/{deployment}/chat/completions",
    "/openai/deployments/{deployment}/embeddings",
    "/v1/tenants/{tenant}/chat",  # a custom route with a {name} segment, guarded through the routes option
]
#: The guard's own routes: the custom route above, matched the way a user would configure it.
CUSTOM_ROUTES = {"/v1/tenants/{tenant}/chat": "completion"}


def starlette_app(recorder: Recorder) -> Any:
    async def llm(request: StarletteRequest) -> Response:
        return await record_llm(recorder, request)

    async def listing(request: StarletteRequest) -> Response:
        return record_list(recorder, request)

    async def catch_all(request: StarletteRequest) -> Response:
        return await lenient(recorder, request)

    def routes() -> list[Any]:
        return [
            *[Route(path, llm, methods=["POST"]) for path in EXPLICIT_POST],
            Route("/v1/chat/completions", listing, methods=["GET"]),
            Route("/{rest:path}", catch_all, methods=ALL_METHODS),
        ]

    return Starlette(
        routes=[Mount("/api", routes=routes()), *routes()],
        middleware=[
            Middleware(LLMHookMiddleware, hooks=[recorder], max_body_bytes=LIMIT, routes=CUSTOM_ROUTES),
            Middleware(MethodOverride),
        ],
    )


def fastapi_app(recorder: Recorder) -> Any:
    def router() -> APIRouter:
        api = APIRouter()
        for path in EXPLICIT_POST:

            async def llm(request: Request, body: dict[str, Any] = Body(...)) -> Response:  # noqa: B008
                return await record_llm(recorder, request, parsed=body)  # FastAPI parsed and validated it

            api.add_api_route(path, llm, methods=["POST"])

        async def listing(request: Request) -> Response:
            return record_list(recorder, request)

        async def catch_all(request: Request) -> Response:
            return await lenient(recorder, request)

        api.add_api_route("/v1/chat/completions", listing, methods=["GET"])
        api.add_api_route("/{rest:path}", catch_all, methods=ALL_METHODS)
        return api

    mounted = FastAPI()
    mounted.include_router(router())
    app = FastAPI()
    app.mount("/api", mounted)
    app.include_router(router())
    app.add_middleware(MethodOverride)
    # the last added is outermost
    app.add_middleware(LLMHookMiddleware, hooks=[recorder], max_body_bytes=LIMIT, routes=CUSTOM_ROUTES)
    return app


APPS: dict[str, Callable[[Recorder], Any]] = {"fastapi": fastapi_app, "starlette": starlette_app}


# -- a raw HTTP/1.1 client ----------------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_responses(data: bytes) -> list[RawResponse]:
    """Every complete response in what the server wrote before it closed the connection."""
    responses: list[RawResponse] = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            size = int(headers["content-length"])
            body, data = rest[:size], rest[size:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                body += rest[:size]
                rest = rest[size + 2 :]
                if size == 0:
                    break
            data = rest
        else:
            body, data = rest, b""
        responses.append(RawResponse(status, headers, body))
    return responses


async def exchange(port: int, payload: bytes, *, half_close: bool = False, timeout: float = 5.0) -> list[RawResponse]:
    """Write ``payload`` as is, then read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        if half_close:
            writer.write_eof()
        received = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    return parse_responses(received)


def request_bytes(
    target: str,
    body: bytes,
    *,
    method: str = "POST",
    headers: list[tuple[str, str]] | None = None,
    framing: str = "length",
    chunk: int = 0,
    close: bool = True,
) -> bytes:
    """One HTTP/1.1 request. ``framing``: ``"length"`` (a true Content-Length), ``"chunked"`` (chunks of
    ``chunk`` bytes, no Content-Length) or ``"none"`` (only the given headers frame the body)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    if close:
        lines.append("Connection: close")
    for name, value in headers if headers is not None else [("Content-Type", "application/json")]:
        lines.append(f"{name}: {value}")
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        size = chunk or max(1, len(body))
        pieces = [body[i : i + size] for i in range(0, len(body), size)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    else:
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


# -- the cases ----------------------------------------------------------------------------------------------------

CHAT = orjson.dumps(chat("what is the capital of France?", user="u-1"))
HOOKED, REFUSED, LISTED, NO_BYPASS, PASSED = "hooked", "refused", "listed", "no-bypass", "passed"
REFUSED_BY_ANYONE = "refused by the guard or the server"


@dataclass
class Case:
    id: str
    payload: bytes
    expect: str
    statuses: tuple[int, ...] = (200,)
    hooked: int = 1  # how many requests the payload holds (pipelining)
    half_close: bool = False
    call_type: str = "completion"


def post(
    case_id: str,
    target: str = "/v1/chat/completions",
    body: bytes = CHAT,
    expect: str = HOOKED,
    statuses: tuple[int, ...] = (200,),
    call_type: str = "completion",
    **options: Any,
) -> Case:
    return Case(case_id, request_bytes(target, body, **options), expect, statuses, call_type=call_type)


PATHS = [
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/chat/completions/",
    "/v1/chat/completions//",
    "//v1//chat///completions",
    "/V1/CHAT/COMPLETIONS",
    "/v1/Chat/Completions/",
    "/v1/chat/complet%69ons",
    "/v1/%63hat/completions",
    "/%76%31/chat/completions",
    "/v1/chat%2Fcompletions",
    "/v1/chat/./completions",
    "/v1/models/../chat/completions",
    "/v1/models/%2e%2e/chat/completions",
    "/v1/chat/completions?stream=false",
    "/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01",
    "/OpenAI/Deployments/gpt-4o/Chat/Completions/",
    "/openai/deployments/gpt-4o//chat/completions",
    "/api/v1/chat/completions",
    "/api//v1/chat/completions/",
    "/api/V1/Chat/Completions",
    "/api/chat/completions",
    # Starlette and the servers keep "." and ".." segments (decoded from %2e too) and {tenant} takes them
    "/v1/tenants/acme/chat",
    "/v1/tenants/./chat",
    "/v1/tenants/../chat",
    "/v1/tenants/%2e%2e/chat",
    "/v1/tenants/%2E/chat",
    "/v1/tenants/.%2E/chat",
    "/api/v1/tenants/../chat",
    "/openai/deployments/./chat/completions",
    "/openai/deployments/%2e%2e/chat/completions",
]

OTHER_ENDPOINTS = [
    ("/v1/completions", {"model": "m", "prompt": "say hi"}, "text_completion"),
    ("/v1/embeddings/", {"model": "m", "input": "say hi"}, "embeddings"),
    ("/V1/Responses", {"model": "m", "input": "say hi"}, "responses"),
    ("/v1/moderations", {"model": "m", "input": "say hi"}, "moderation"),
    ("//v1/images//generations", {"model": "m", "prompt": "a cat"}, "image_generation"),
    ("/openai/deployments/ada/embeddings", {"input": "say hi"}, "embeddings"),
    ("/api/v1/responses", {"model": "m", "input": "say hi"}, "responses"),
]


def multipart(fields: dict[str, str], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    return out + f"--{boundary}--\r\n".encode()


def nested(depth: int) -> bytes:
    return b'{"model": "m", "messages": [], "x": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"


def with_value(raw: str) -> bytes:
    return b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "v": ' + raw.encode() + b"}"


SMUGGLED = CHAT.replace(b"France", b"Spain")
CASES: list[Case] = [
    *[post(f"path {path}", path) for path in PATHS],
    *[
        post(f"endpoint {path}", path, orjson.dumps(body), call_type=call_type)
        for path, body, call_type in OTHER_ENDPOINTS
    ],
    # methods
    Case("GET lists stored completions untouched", request_bytes("/v1/chat/completions", b"", method="GET",
                                                                 headers=[]), LISTED),
    Case("GET with a body and no override", request_bytes("/v1/chat/completions", CHAT, method="GET"), LISTED),
    *[
        post(f"GET + {header}: {value}", method="GET", headers=[("Content-Type", "application/json"),
                                                                (header, value)])
        for header in OVERRIDE_HEADERS
        for value in ("POST", "post")
    ],
    # only POST is guarded (docs/reference.md#guarded-requests): an override to another method passes through exactly as
    # that method does
    *[
        Case(f"GET + {header}: {value} (passes through like a plain {value})",
             request_bytes("/v1/chat/completions", CHAT, method="GET",
                           headers=[("Content-Type", "application/json"), (header, value)]),
             PASSED, statuses=(405,))
        for header in OVERRIDE_HEADERS
        for value in ("PUT", "PATCH")
    ],
    *[
        Case(f"plain {method}", request_bytes("/v1/chat/completions", CHAT, method=method), PASSED,
             statuses=(405,))
        for method in ("PUT", "PATCH", "DELETE")
    ],
    # content types and encodings
    post("no content-type", headers=[]),
    post("text/plain", headers=[("Content-Type", "text/plain")]),
    post("application/json; charset=utf-8", headers=[("Content-Type", "application/json; charset=utf-8")]),
    post("charset=latin-1 but UTF-8 bytes", body=orjson.dumps(chat("café crème")),
         headers=[("Content-Type", "application/json; charset=ISO-8859-1")]),
    post("form-urlencoded holding a JSON object", headers=[("Content-Type", "application/x-www-form-urlencoded")]),
    post("vendor +json", headers=[("Content-Type", "application/vnd.api+json")]),
    post("form-urlencoded fields", body=b"model=m&messages=hi", expect=REFUSED, statuses=(400,),
         headers=[("Content-Type", "application/x-www-form-urlencoded")]),
    post("multipart on a JSON route", body=multipart({"model": "m", "messages": "hi"}), expect=REFUSED,
         statuses=(400,), headers=[("Content-Type", "multipart/form-data; boundary=XyZ")]),
    post("multipart holding JSON", body=multipart({"json": CHAT.decode()}), expect=REFUSED, statuses=(400,),
         headers=[("Content-Type", "multipart/form-data; boundary=XyZ")]),
    post("content-encoding gzip", body=gzip.compress(CHAT), expect=REFUSED, statuses=(415,),
         headers=[("Content-Type", "application/json"), ("Content-Encoding", "gzip")]),
    post("content-encoding GZip, mixed case", body=gzip.compress(CHAT), expect=REFUSED, statuses=(415,),
         headers=[("Content-Type", "application/json"), ("Content-Encoding", "GZip")]),
    post("content-encoding identity then gzip", body=gzip.compress(CHAT), expect=REFUSED, statuses=(415,),
         headers=[("Content-Type", "application/json"), ("Content-Encoding", "identity"),
                  ("Content-Encoding", "gzip")]),
    post("content-encoding identity", headers=[("Content-Type", "application/json"),
                                               ("Content-Encoding", "identity")]),
    # framing
    *[post(f"chunked by {size} bytes", framing="chunked", chunk=size) for size in (1, 7, 100, 100_000)],
    post("chunked, over the limit", body=orjson.dumps(chat("x" * (LIMIT + 10))), framing="chunked", chunk=4096,
         expect=REFUSED, statuses=(413,)),
    Case("content-length over the limit, no body sent",
         request_bytes("/v1/chat/completions", b"", framing="none",
                       headers=[("Content-Type", "application/json"), ("Content-Length", str(LIMIT + 1))]),
         REFUSED, statuses=(413,)),
    Case("content-length shorter than the body",
         request_bytes("/v1/chat/completions", CHAT, framing="none",
                       headers=[("Content-Type", "application/json"), ("Content-Length", str(len(CHAT) - 10))]),
         REFUSED_BY_ANYONE, statuses=(400,)),  # hypercorn (h11) may answer the excess bytes first
    Case("content-length shorter: the rest is a second request",
         request_bytes("/v1/chat/completions", CHAT, close=False)
         + request_bytes("/V1/chat/completions/", SMUGGLED), HOOKED, hooked=2),
    Case("content-length longer than the body, then EOF",
         request_bytes("/v1/chat/completions", CHAT, framing="none",
                       headers=[("Content-Type", "application/json"), ("Content-Length", str(len(CHAT) + 50))]),
         NO_BYPASS, statuses=(400,), half_close=True),
    Case("content-length and chunked together",
         request_bytes("/v1/chat/completions", CHAT, framing="chunked", chunk=10,
                       headers=[("Content-Type", "application/json"), ("Content-Length", "5")]),
         NO_BYPASS, statuses=(200, 400)),
    Case("content-length not a number",
         request_bytes("/v1/chat/completions", CHAT, framing="none",
                       headers=[("Content-Type", "application/json"), ("Content-Length", "12abc")]),
         NO_BYPASS, statuses=(400,)),
    Case("two different content-lengths",
         request_bytes("/v1/chat/completions", CHAT, framing="none",
                       headers=[("Content-Type", "application/json"), ("Content-Length", str(len(CHAT))),
                                ("Content-Length", str(len(CHAT) - 1))]),
         NO_BYPASS, statuses=(400,)),
    # body content
    post("duplicate messages key",
         body=b'{"model": "m", "messages": [{"role": "user", "content": "harmless"}], '
              b'"messages": [{"role": "user", "content": "the real prompt"}]}'),
    post("duplicate model and stream keys",
         body=b'{"model": "a", "stream": true, "messages": [], "model": "b", "stream": false}'),
    post("duplicate nested keys",
         body=b'{"model": "m", "messages": [{"role": "user", "content": "a", "content": "b"}]}'),
    post("nested 200 deep", body=nested(200)),
    post("nested 300 deep", body=nested(300), expect=REFUSED + "|" + HOOKED, statuses=(200, 400)),
    post("nested 600 deep", body=nested(600), expect=REFUSED + "|" + HOOKED, statuses=(200, 400)),
    post("nested 5000 deep", body=nested(5000), expect=REFUSED, statuses=(400,)),
    post("invalid UTF-8 in a string", body=b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
         expect=REFUSED, statuses=(400,)),
    post("overlong UTF-8", body=b'{"model": "m", "messages": [{"role": "user", "content": "\xc0\xaf"}]}',
         expect=REFUSED, statuses=(400,)),
    post("invalid UTF-8 in a key", body=b'{"model": "m", "\xed\xa0\x80": 1, "messages": []}',
         expect=REFUSED, statuses=(400,)),
    post("lone surrogate escape", body=with_value('"\\ud800"'), expect=REFUSED, statuses=(400,)),
    post("UTF-16 body", body=CHAT.decode().encode("utf-16"), expect=REFUSED, statuses=(400,)),
    post("UTF-8 BOM", body=b"\xef\xbb\xbf" + CHAT, expect=REFUSED + "|" + HOOKED, statuses=(200, 400)),
    *[post(f"value {raw}", body=with_value(raw), expect=REFUSED, statuses=(400,))
      for raw in ("NaN", "Infinity", "-Infinity", "1e400", "-1e400")],
    *[post(f"value {raw}", body=with_value(raw))
      for raw in ("18446744073709551615", "18446744073709551616", "-9223372036854775809", "1" + "0" * 40,
                  "-0", "1.5e-400", '"\\u0000"', '"\\u2028\\n\\r"')],
    post("control character inside a string", body=with_value('"a\tb"'), expect=REFUSED + "|" + HOOKED,
         statuses=(200, 400)),
    post("trailing garbage", body=CHAT + b" x", expect=REFUSED, statuses=(400,)),
    post("two JSON objects", body=CHAT + CHAT, expect=REFUSED, statuses=(400,)),
    post("a JSON array of the request", body=b"[" + CHAT + b"]", expect=REFUSED, statuses=(400,)),
    post("a JSON string", body=b'"hello"', expect=REFUSED, statuses=(400,)),
    post("empty body", body=b"", expect=REFUSED, statuses=(400,)),
    post("whitespace only", body=b" \r\n\t ", expect=REFUSED, statuses=(400,)),
    post("leading and trailing whitespace", body=b" \r\n" + CHAT + b"\n "),
    post("a long prompt under the limit", body=orjson.dumps(chat("y" * (LIMIT - 200)))),
]


# -- the matrix ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Target:
    port: int
    recorder: Recorder
    server: str


@pytest.fixture(scope="module", params=[(s, a) for s in SERVERS for a in APPS], ids=lambda p: f"{p[0]}-{p[1]}")
async def target(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Target]:
    server, app_name = request.param
    recorder = Recorder()
    async with SERVERS[server](APPS[app_name](recorder)) as base_url:
        yield Target(int(base_url.rsplit(":", 1)[1]), recorder, server)


def check_no_bypass(recorder: Recorder) -> None:
    """Everything the app did LLM work on is, one to one and in order, what a hook saw last."""
    llm = [seen for seen in recorder.app if seen.kind == "llm"]
    assert len(llm) <= len(recorder.hooked), f"the app did LLM work on unhooked requests: {llm}"
    tokens = {json.loads(view)["_guard_token"]: json.loads(view) for _, view in recorder.hooked}
    for seen in llm:
        assert isinstance(seen.parsed, dict) and "_guard_token" in seen.parsed, f"unhooked body reached the app: {seen}"
        assert seen.parsed == tokens.get(seen.parsed["_guard_token"]), "the app received something the hook did not see"
        assert seen.guard_data is not None and json.loads(seen.guard_data) == seen.parsed


def check_refused(case: Case, responses: list[RawResponse], recorder: Recorder) -> None:
    assert len(responses) >= 1, "no response"
    response = responses[0]
    assert response.status in case.statuses, (response.status, response.body)
    assert response.headers.get("content-type") == "application/json", response.headers
    error = orjson.loads(response.body)["error"]
    assert error["code"] == str(response.status) and error["type"] == "invalid_request_error", error
    assert isinstance(error["message"], str) and error["message"], error
    assert recorder.hooked == [] and recorder.app == []


def check_hooked(case: Case, responses: list[RawResponse], recorder: Recorder) -> None:
    assert [r.status for r in responses] == [200] * case.hooked, [(r.status, r.body[:200]) for r in responses]
    llm = [seen for seen in recorder.app if seen.kind == "llm"]
    assert len(recorder.hooked) == case.hooked and len(llm) == case.hooked, (recorder.hooked, recorder.app)
    assert {call_type for call_type, _ in recorder.hooked} == {case.call_type}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_bypass_matrix(target: Target, case: Case) -> None:
    recorder = target.recorder
    recorder.reset()
    responses = await exchange(target.port, case.payload, half_close=case.half_close)
    check_no_bypass(recorder)
    if case.expect == HOOKED:
        check_hooked(case, responses, recorder)
    elif case.expect == REFUSED:
        check_refused(case, responses, recorder)
    elif case.expect == REFUSED + "|" + HOOKED:
        assert responses, "no response"
        if responses[0].status == 200:
            check_hooked(case, responses, recorder)
        else:
            check_refused(case, responses, recorder)
    elif case.expect == REFUSED_BY_ANYONE:
        assert responses and responses[0].status in case.statuses, [(r.status, r.body) for r in responses]
        assert recorder.hooked == [] and recorder.app == []
    elif case.expect == LISTED:
        assert [r.status for r in responses] == [200]
        assert recorder.hooked == []
        assert [(seen.kind, seen.method) for seen in recorder.app] == [("list", "GET")]
        assert recorder.app[0].guard_data is None
    elif case.expect == PASSED:
        # Not a guarded method: neither the hook nor an LLM handler saw it (the app answers for the method).
        assert [r.status for r in responses] == list(case.statuses), [(r.status, r.body) for r in responses]
        assert recorder.hooked == [] and not [seen for seen in recorder.app if seen.kind == "llm"]
    else:
        assert case.expect == NO_BYPASS
        assert all(r.status in case.statuses for r in responses), [(r.status, r.body) for r in responses]
        assert not [seen for seen in recorder.app if seen.kind == "llm" and seen.guard_data is None]


# -- removed defaults: what stays guarded still is, whatever fills a {name} segment -----------------------------


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(
    "target",
    [
        "/openai/deployments/gpt/completions",
        "/openai/deployments/./completions",
        "/openai/deployments/../completions",
        "/openai/deployments/%2e/completions",
        "/openai/deployments/%2E%2E/completions",
    ],
)
async def test_azure_form_with_its_plain_default_removed_is_guarded_for_any_deployment(
    server: str, target: str
) -> None:
    """Regression: with ``routes={"/completions": None}`` the Azure form stays guarded, and a deployment of "."
    or ".." (which Starlette's ``{deployment}`` takes) no longer walks around it."""
    recorder = Recorder()

    async def llm(request: StarletteRequest) -> Response:
        return await record_llm(recorder, request)

    app = Starlette(
        routes=[Route("/openai/deployments/{deployment}/completions", llm, methods=["POST"])],
        middleware=[Middleware(LLMHookMiddleware, hooks=[recorder], routes={"/completions": None})],
    )
    body = orjson.dumps({"model": "m", "prompt": "say hi"})
    async with SERVERS[server](app) as base_url:
        responses = await exchange(int(base_url.rsplit(":", 1)[1]), request_bytes(target, body))
    check_no_bypass(recorder)
    assert [r.status for r in responses] == [200], [(r.status, r.body) for r in responses]
    assert [call_type for call_type, _ in recorder.hooked] == ["text_completion"]
    assert len(recorder.app) == 1


# -- method overrides in process: the hooked body reaches the app ------------------------------------------------


class Mark:
    def __init__(self) -> None:
        self.calls = 0

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        self.calls += 1
        return {**data, "hooked": True}


@pytest.mark.parametrize("header", OVERRIDE_HEADERS)
@pytest.mark.parametrize("value", ["POST", "post", " Post "])
async def test_method_override_is_guarded_and_the_app_gets_the_hooked_body(header: str, value: str) -> None:
    hook = Mark()
    body = orjson.dumps(chat())
    script = Script(body_messages(body, parts=3))
    scope = http_scope(method="GET", headers=[(b"content-type", b"text/plain"), (header.encode(), value.encode())])
    seen: list[dict[str, Any]] = []

    async def app_side(scope: Any, receive: Any, send: Any) -> None:
        seen.append(orjson.loads(await receive_body(receive)))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    app = LLMHookMiddleware(app_side, hooks=[hook])
    await app(scope, script.receive, script.send)
    assert hook.calls == 1
    assert seen == [{**chat(), "hooked": True}]
    assert script.status == 200


@pytest.mark.parametrize("header", OVERRIDE_HEADERS)
@pytest.mark.parametrize("value", ["PUT", "patch"])
async def test_method_override_to_another_write_passes_through_like_that_method(header: str, value: str) -> None:
    # Regression: an override to PUT or PATCH was guarded while a real PUT or PATCH passes through (only POST is
    # guarded, docs/reference.md#guarded-requests); both now reach the app untouched.
    hook = Mark()
    calls: list[tuple[Any, Any, Any]] = []

    async def app_side(scope: Any, receive: Any, send: Any) -> None:
        calls.append((scope, receive, send))
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = LLMHookMiddleware(app_side, hooks=[hook])
    for method, headers in (("GET", [(header.encode(), value.encode())]), (value.upper(), [])):
        scope = http_scope(method=method, headers=[(b"content-type", b"application/json"), *headers])
        script = Script(body_messages(orjson.dumps(chat())))
        await app(scope, script.receive, script.send)
        assert calls[-1] == (scope, script.receive, script.send) and calls[-1][0] is scope
        assert script.receive_calls == 0 and script.status == 405
    assert hook.calls == 0


async def test_plain_get_on_a_guarded_path_reaches_the_app_untouched() -> None:
    hook = Mark()
    calls: list[tuple[Any, Any, Any]] = []

    async def app_side(scope: Any, receive: Any, send: Any) -> None:
        calls.append((scope, receive, send))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"[]"})

    app = LLMHookMiddleware(app_side, hooks=[hook])
    scope = http_scope(method="GET", headers=[])
    script = Script([{"type": "http.request", "body": b"", "more_body": False}])
    await app(scope, script.receive, script.send)
    assert hook.calls == 0
    assert calls == [(scope, script.receive, script.send)]
    assert calls[0][0] is scope and scope["method"] == "GET" and "llm_guard" not in scope["state"]
    assert script.receive_calls == 0


# -- a router matching with re.IGNORECASE, a framework upper-casing the method ------------------------------------

#: The servers a path or a method reaches the app through as the client wrote it: uvicorn with httptools (its
#: default when installed) and with h11 (the default of a plain ``pip install uvicorn``), and hypercorn.
RAW_SERVERS: dict[str, Callable[..., Any]] = {
    "uvicorn-httptools": lambda app: SERVERS["uvicorn"](app, http="httptools"),
    "uvicorn-h11": lambda app: SERVERS["uvicorn"](app, http="h11"),
    "hypercorn": lambda app: SERVERS["hypercorn"](app),
}


class IgnoreCaseRouter:
    """An app as a common recipe writes one: routes compiled with ``re.IGNORECASE`` and the method upper-cased
    before dispatch (as Django does), so ``post /v1/chat/completion\\u017f`` runs the chat view."""

    ROUTES = [
        (re.compile(r"(?:/v1)?/chat/completions/?", re.IGNORECASE), "completion"),
        (re.compile(r"(?:/v1)?/embeddings/?", re.IGNORECASE), "embeddings"),
        (re.compile(r"(?:/v1)?/images/generations/?", re.IGNORECASE), "image_generation"),
        (re.compile(r"(?:/v1)?/responses/?", re.IGNORECASE), "responses"),
    ]

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = StarletteRequest(scope, receive)
        if scope["method"].upper() == "POST":
            for pattern, _ in self.ROUTES:
                if pattern.fullmatch(scope["path"]):
                    response = await record_llm(self.recorder, request)
                    await response(scope, receive, send)
                    return
        await JSONResponse({"detail": "Not Found"}, status_code=404)(scope, receive, send)


UNICODE_PATHS = [
    ("/v1/chat/completion%C5%BF", "completion"),  # long s
    ("/v1/chat/completion%C5%BF/", "completion"),
    ("/v1/chat/complet%C4%B1ons", "completion"),  # dotless i
    ("/v1/chat/complet%C4%B0ons", "completion"),  # I with dot above
    ("/v1/embedd%C4%B1ngs", "embeddings"),
    ("/v1/%C4%B1mages/generat%C4%B0ons", "image_generation"),
    ("/v1/re%C5%BFpon%C5%BFe%C5%BF", "responses"),
]


@pytest.mark.parametrize("server", RAW_SERVERS)
@pytest.mark.parametrize(("path", "call_type"), UNICODE_PATHS)
async def test_a_path_a_re_ignorecase_router_dispatches_is_guarded(server: str, path: str, call_type: str) -> None:
    # Regression: the guard lower-cased the path with str.lower(), which leaves "\u017f" and "\u0131" alone, while
    # re.IGNORECASE takes them for "s" and "i": the chat view ran unguarded.
    recorder = Recorder()
    app = LLMHookMiddleware(IgnoreCaseRouter(recorder), hooks=[recorder])
    async with RAW_SERVERS[server](app) as base_url:
        responses = await exchange(int(base_url.rsplit(":", 1)[1]), request_bytes(path, CHAT))
    check_no_bypass(recorder)
    assert [r.status for r in responses] == [200], [(r.status, r.body) for r in responses]
    assert [seen_type for seen_type, _ in recorder.hooked] == [call_type]
    assert len(recorder.app) == 1


@pytest.mark.parametrize("server", RAW_SERVERS)
@pytest.mark.parametrize("method", ["post", "Post", "pOsT"])
async def test_a_post_in_another_case_never_reaches_a_view_unguarded(server: str, method: str) -> None:
    # Regression: uvicorn with h11 passes "post" through as the method; the guard tested == "POST" and a framework
    # that upper-cases methods ran its POST view unguarded. Servers that refuse the method are fine too.
    recorder = Recorder()
    app = LLMHookMiddleware(IgnoreCaseRouter(recorder), hooks=[recorder])
    async with RAW_SERVERS[server](app) as base_url:
        responses = await exchange(
            int(base_url.rsplit(":", 1)[1]), request_bytes("/v1/chat/completions", CHAT, method=method)
        )
    check_no_bypass(recorder)
    assert responses, "no response"
    if responses[0].status == 200:
        assert len(recorder.hooked) == 1 and len(recorder.app) == 1
    else:  # the server itself refused the method
        assert responses[0].status == 400 and recorder.hooked == [] and recorder.app == []
    if server == "uvicorn-h11":
        assert responses[0].status == 200, "h11 passes a lower-case method through: this case must be exercised"
