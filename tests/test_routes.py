"""Which requests are guarded: path spellings, mounts, methods, and what passes through untouched
(docs/reference.md#guarded-requests)."""

from __future__ import annotations

import asyncio
import re
import string
from typing import Any

import orjson
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from asgi_llm_guard import LLMHookMiddleware
from asgi_llm_guard.routes import RouteTable, fold, normalise

from .apps import Downstream, Script, body_messages, chat, client, guarded, http_scope
from .servers import serve


class RefuseAll:
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str) -> Any:
        return f"refused {call_type}"


def test_normalise_is_as_lenient_as_any_router() -> None:
    assert normalise("//V1/./Chat//Completions/") == ["v1", "chat", "completions"]
    assert normalise("/v1/x/../chat/completions") == ["v1", "chat", "completions"]
    assert normalise("/") == []


@pytest.mark.parametrize(
    ("path", "call_type"),
    [
        ("/v1/chat/completions", "completion"),
        ("/chat/completions", "completion"),
        ("/v1/completions", "text_completion"),
        ("/completions/", "text_completion"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/images/generations", "image_generation"),
        ("/v1/moderations", "moderation"),
        ("/v1/audio/transcriptions", "audio_transcription"),
        ("/v1/audio/translations", "audio_transcription"),
        ("/v1/responses", "responses"),
        ("/openai/deployments/gpt-4o/chat/completions", "completion"),
        ("/openai/deployments/ada/embeddings", "embeddings"),
        ("/api/v1/chat/completions", "completion"),
    ],
)
def test_default_routes(path: str, call_type: str) -> None:
    match = RouteTable().match(path)
    assert match is not None and match.call_type == call_type


@pytest.mark.parametrize(
    "path",
    ["/v1/models", "/v1/files", "/health", "/v1/chat", "/v1/chat/completions/abc", "/v1/responses/resp_1/cancel", "/"],
)
def test_other_paths_are_not_guarded(path: str) -> None:
    assert RouteTable().match(path) is None


def test_azure_deployment_is_captured() -> None:
    match = RouteTable().match("/openai/deployments/my-gpt/chat/completions")
    assert match is not None and match.params == {"deployment": "my-gpt"}


@pytest.mark.parametrize(
    "path",
    [
        "/openai/deployments/GPT-4o-Prod/chat/completions",
        "/OpenAI/Deployments/GPT-4o-Prod/Chat/Completions/",
        "/openai/deployments/GPT-4o-Prod/./chat/completions",
        "/x/../openai/deployments/GPT-4o-Prod/chat/completions",
    ],
)
def test_segment_values_keep_the_paths_spelling(path: str) -> None:
    # Regression: values came from the lower-cased path; matching stays case-insensitive.
    match = RouteTable().match(path)
    assert match is not None and match.call_type == "completion" and match.params == {"deployment": "GPT-4o-Prod"}


def test_each_pattern_names_its_own_segments() -> None:
    # Regression: "/v1/tenants/{tenant}/completions" shares its last two trie nodes with the Azure text-completion
    # form, and its value was reported under the Azure form's name, "deployment".
    table = RouteTable({"/v1/tenants/{tenant}/completions": "text_completion", "/x/{a}/{b}/chat": "completion"})
    match = table.match("/v1/tenants/acme/completions")
    assert match is not None and match.params == {"tenant": "acme"}
    match = table.match("/openai/deployments/ada/completions")
    assert match is not None and match.params == {"deployment": "ada"}
    match = table.match("/x/1/2/chat")
    assert match is not None and match.params == {"a": "1", "b": "2"}


async def test_a_refusal_does_not_take_a_tenant_for_the_model() -> None:
    app, _ = guarded(RefuseAll(), routes={"/v1/tenants/{tenant}/completions": "text_completion"})
    async with client(app) as c:
        response = await c.post("/v1/tenants/acme/completions", json={"prompt": "x"})
    assert response.status_code == 200
    assert response.json()["model"] == "unknown"


# -- case folding as re.IGNORECASE does it ----------------------------------------------------------------------


def test_fold_equates_every_character_that_re_ignorecase_equates_with_an_ascii_letter() -> None:
    # Regression: the guard lower-cased with str.lower(), while a router compiled with re.IGNORECASE also takes
    # "\u017f" (long s) for "s" and "\u0131"/"\u0130" for "i": /v1/chat/completion\u017f reached its chat
    # handler unguarded. Every code point is checked against re itself, so a new Python's tables are caught too.
    letters = re.compile("|".join(f"({letter})" for letter in string.ascii_lowercase), re.IGNORECASE)
    everything = "".join(map(chr, range(0x110000)))
    equated = {(match.group(), string.ascii_lowercase[match.lastindex - 1]) for match in letters.finditer(everything)
               if match.lastindex is not None}
    assert len(equated) >= 52 + 4  # both cases of every letter, and at least the four below
    assert {("\u0130", "i"), ("\u0131", "i"), ("\u017f", "s"), ("\u212a", "k")} <= equated
    for char, letter in equated:
        assert fold(char) == letter, (hex(ord(char)), letter)


def test_fold_equates_what_re_ignorecase_equates_beyond_ascii() -> None:
    # Routes given in the routes option may hold any letter: each cased character is folded with its other cases
    # and with its re.IGNORECASE variants (final sigma, micro sign, the symbol forms of Greek letters...).
    for code in range(0x110000):
        char = chr(code)
        for other in {char.upper(), char.lower(), char.title(), char.casefold(), char.lower()[:1], char.upper()[:1]}:
            if len(other) == 1 and other != char and re.fullmatch(re.escape(char), other, re.IGNORECASE):
                assert fold(char) == fold(other), (hex(code), hex(ord(other)))
    for pair in ("\u03c2\u03c3", "\u00b5\u03bc\u039c", "\u0345\u03b9\u1fbe", "\ufb05\ufb06", "\u1c88\ua64b"):
        assert len({fold(char) for char in pair}) == 1, pair
        assert all(re.fullmatch(re.escape(pair[0]), char, re.IGNORECASE) for char in pair)


def test_fold_of_ascii_is_lower() -> None:
    assert fold("/V1/Chat/COMPLETIONS") == "/v1/chat/completions"


@pytest.mark.parametrize(
    ("path", "call_type"),
    [
        ("/v1/chat/completion\u017f", "completion"),
        ("/v1/chat/completion\u017F/", "completion"),
        ("/v1/\u0131mages/generat\u0130ons", "image_generation"),
        ("/v1/re\u017fpon\u017fe\u017f", "responses"),
        ("/v1/embedd\u0131ngs", "embeddings"),
        ("/openai/deployments/GPT/\u0130mages/generations", "image_generation"),
        ("/v1/moderat\u0130on\u017f", "moderation"),
        ("/v1/audio/tran\u017fcription\u017f", "audio_transcription"),
    ],
)
def test_paths_a_re_ignorecase_router_takes_for_a_route_are_guarded(path: str, call_type: str) -> None:
    pattern = DEFAULT_PATTERN_OF[call_type]
    assert re.search(pattern, path, re.IGNORECASE), "the router would not dispatch this path: a useless case"
    match = RouteTable().match(path)
    assert match is not None and match.call_type == call_type


DEFAULT_PATTERN_OF = {
    "completion": r"/chat/completions/?$",
    "image_generation": r"/images/generations/?$",
    "responses": r"/responses/?$",
    "embeddings": r"/embeddings/?$",
    "moderation": r"/moderations/?$",
    "audio_transcription": r"/audio/transcriptions/?$",
}


def test_a_route_with_non_ascii_letters_is_matched_in_any_case() -> None:
    table = RouteTable({"/v1/\u03c3\u03c5\u03bd\u03bf\u03c8\u03b7/\u00b5": "completion"})
    for path in ("/v1/\u03a3\u03a5\u039d\u039f\u03a8\u0397/\u039c", "/v1/\u03c3\u03c5\u03bd\u03bf\u03c8\u03b7/\u03bc"):
        match = table.match(path)
        assert match is not None and match.call_type == "completion", path


async def test_a_long_s_in_the_path_does_not_reach_the_app_unguarded() -> None:
    app, down = guarded(RefuseAll())
    async with client(app) as c:
        response = await c.post("/v1/chat/completion%C5%BF", json=chat())
    assert response.json()["choices"][0]["message"]["content"] == "refused completion"
    assert down.received == []


def test_paths_differing_in_case_get_their_own_values() -> None:
    table = RouteTable()
    first = table.match("/openai/deployments/Ada/embeddings")
    second = table.match("/openai/deployments/ADA/embeddings")
    assert first is not None and first.params == {"deployment": "Ada"}
    assert second is not None and second.params == {"deployment": "ADA"}


def test_custom_routes_merge_over_defaults() -> None:
    table = RouteTable({"/v1/tenants/{tenant}/chat": "completion", "/embeddings": None})
    match = table.match("/V1/tenants/acme/chat/")
    assert match is not None and match.call_type == "completion" and match.params == {"tenant": "acme"}
    assert table.match("/v1/embeddings") is None
    assert table.match("/v1/chat/completions") is not None


@pytest.mark.parametrize("segment", [".", ".."])
def test_dot_segment_filling_a_name_segment_is_matched(segment: str) -> None:
    # Regression: Starlette and uvicorn keep "." and ".." as path segments and a {tenant} route takes them as its
    # value, so the literal reading must match as well as the dot-resolved one.
    table = RouteTable({"/v1/tenants/{tenant}/chat": "completion"})
    match = table.match(f"/v1/tenants/{segment}/chat")
    assert match is not None and match.call_type == "completion" and match.params == {"tenant": segment}


def test_dot_segment_as_an_azure_deployment_is_matched() -> None:
    table = RouteTable({"/completions": None})
    for path in ("/openai/deployments/./completions", "/openai/deployments/../completions"):
        match = table.match(path)
        assert match is not None and match.call_type == "text_completion", path


def test_the_longer_match_wins_across_readings() -> None:
    # Starlette routes this to the Azure chat handler (deployment "."); resolved, it reads as an Azure text
    # completion for deployment "chat", one segment shorter.
    match = RouteTable().match("/openai/deployments/./chat/completions")
    assert match is not None and match.call_type == "completion" and match.params == {"deployment": "."}
    # Literally only the "/completions" tail matches; resolved, "/chat/completions" does.
    match = RouteTable().match("/v1/chat/./completions")
    assert match is not None and match.call_type == "completion"


def test_on_a_tie_the_literal_reading_wins() -> None:
    # Three segments each: literally "tenants/../chat", resolved "api/x/chat".
    match = RouteTable({"/v1/tenants/{tenant}/chat": "completion", "/api/x/chat": "embeddings"}).match(
        "/api/x/tenants/../chat"
    )
    assert match is not None and match.call_type == "completion" and match.params == {"tenant": ".."}


def test_the_resolved_reading_still_guards_what_the_literal_one_does_not() -> None:
    match = RouteTable().match("/v1/chat/completions/x/..")
    assert match is not None and match.call_type == "completion"


async def test_dot_segment_name_value_does_not_reach_a_starlette_handler_unguarded() -> None:
    async def tenant_chat(request: Request) -> JSONResponse:
        return JSONResponse({"reached": request.path_params["tenant"]})

    app = Starlette(routes=[Route("/v1/tenants/{tenant}/chat", tenant_chat, methods=["POST"])])
    app.add_middleware(LLMHookMiddleware, hooks=[RefuseAll()], routes={"/v1/tenants/{tenant}/chat": "completion"})
    for segment in (".", ".."):
        # Scripted: httpx would resolve the dot segments before sending.
        script = Script(body_messages(orjson.dumps(chat())))
        await app(http_scope(f"/v1/tenants/{segment}/chat"), script.receive, script.send)
        assert orjson.loads(script.body)["choices"][0]["message"]["content"] == "refused completion", segment


def test_removing_an_azure_form_is_not_undone_by_the_plain_tail() -> None:
    # Regression: "/embeddings" used to match the removed Azure form's path by its tail, so the removal did nothing.
    table = RouteTable({"/openai/deployments/{deployment}/embeddings": None})
    assert table.match("/openai/deployments/ada/embeddings") is None
    assert table.match("/v1/openai/deployments/ada/embeddings/") is None
    for path in ("/v1/embeddings", "/embeddings", "/api/v1/embeddings", "/openai/deployments/embeddings"):
        match = table.match(path)
        assert match is not None and match.call_type == "embeddings", path
    match = table.match("/openai/deployments/ada/chat/completions")
    assert match is not None and match.call_type == "completion"


def test_a_removal_names_its_segments_as_it_likes() -> None:
    table = RouteTable({"/openai/deployments/{name}/embeddings": None})
    assert table.match("/openai/deployments/ada/embeddings") is None


def test_removing_chat_does_not_leave_it_guarded_as_a_text_completion() -> None:
    table = RouteTable({"/chat/completions": None})
    assert table.match("/v1/chat/completions") is None
    match = table.match("/v1/completions")
    assert match is not None and match.call_type == "text_completion"
    match = table.match("/openai/deployments/gpt/chat/completions")  # the Azure form is a default of its own
    assert match is not None and match.call_type == "completion"


def test_a_removal_only_covers_the_routes_it_ends_with() -> None:
    # The removed Azure text-completion form matches this path with deployment "chat"; the chat default, which a
    # router mounting the OpenAI routes under "/openai/deployments" dispatches it to, must stay guarded.
    table = RouteTable({"/openai/deployments/{deployment}/completions": None})
    match = table.match("/openai/deployments/chat/completions")
    assert match is not None and match.call_type == "completion"
    assert table.match("/openai/deployments/gpt/completions") is None
    match = table.match("/v1/completions")
    assert match is not None and match.call_type == "text_completion"


def test_a_removal_of_a_path_that_is_no_default_exempts_it_from_a_default_tail() -> None:
    table = RouteTable({"/admin/cache/embeddings": None})
    assert table.match("/admin/cache/embeddings") is None
    match = table.match("/admin/embeddings")
    assert match is not None and match.call_type == "embeddings"


def test_a_longer_guarded_route_wins_over_a_removal() -> None:
    table = RouteTable({"/embeddings": None, "/tenants/{tenant}/embeddings": "embeddings"})
    assert table.match("/v1/embeddings") is None
    match = table.match("/v1/tenants/acme/embeddings")
    assert match is not None and match.call_type == "embeddings"


def test_a_removal_holds_in_either_reading_of_a_dot_segment_path() -> None:
    # Literally the removed Azure form (deployment "."); resolved, "/openai/deployments/embeddings" ends with the
    # "/embeddings" default: guarded, since a path is guarded if either reading matches.
    table = RouteTable({"/openai/deployments/{deployment}/embeddings": None})
    match = table.match("/openai/deployments/./embeddings")
    assert match is not None and match.call_type == "embeddings"


async def test_a_removed_azure_form_reaches_the_app_untouched_and_the_plain_route_is_guarded() -> None:
    app, down = guarded(RefuseAll(), routes={"/openai/deployments/{deployment}/embeddings": None})
    async with client(app) as c:
        passed = await c.post("/openai/deployments/ada/embeddings", content=b'{"input": "x", "input": "y"}')
        refused = await c.post("/v1/embeddings", json={"model": "m", "input": "x"})
    # untouched: a guarded body would have been re-serialised with one "input"
    assert passed.status_code == 200 and down.received[0].body == b'{"input": "x", "input": "y"}'
    assert down.received[0].state is None
    assert refused.status_code == 400 and refused.json()["error"]["message"] == "refused embeddings"
    assert len(down.received) == 1


def test_memo_is_bounded() -> None:
    table = RouteTable()
    for index in range(10_000):
        table.match(f"/random/{index}")
    assert len(table._memo) <= 4096


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/chat/completions",
        "/v1/chat/completions/",
        "//v1/chat/completions",
        "/v1//chat///completions",
        "/V1/CHAT/COMPLETIONS",
        "/v1/./chat/completions",
        "/openai/deployments/gpt4/chat/completions",
    ],
)
async def test_every_spelling_of_a_guarded_route_is_guarded(path: str) -> None:
    app, down = guarded(RefuseAll())
    async with client(app) as c:
        response = await c.post(path, json=chat())
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "refused completion"
    assert down.received == []


async def test_azure_refusal_names_the_deployment_when_the_body_has_no_model() -> None:
    app, _ = guarded(RefuseAll())
    async with client(app) as c:
        response = await c.post(
            "/openai/deployments/gpt4/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
        )
    assert response.json()["model"] == "gpt4"


async def test_azure_refusal_names_the_deployment_as_the_client_spelt_it() -> None:
    app, _ = guarded(RefuseAll())
    async with client(app) as c:
        response = await c.post(
            "/openai/deployments/GPT-4o-Prod/chat/completions?api-version=2024-06-01",
            json={"messages": [{"role": "user", "content": "x"}]},
        )
    assert response.status_code == 200
    assert response.json()["model"] == "GPT-4o-Prod"


async def handler(request: Request) -> JSONResponse:
    return JSONResponse({"reached": request.url.path, "body": await request.json()})


async def test_guard_on_an_outer_app_covers_routes_mounted_under_a_prefix() -> None:
    inner = Starlette(routes=[Route("/v1/chat/completions", handler, methods=["POST"])])
    outer = Starlette(routes=[Mount("/api", app=inner)])
    outer.add_middleware(LLMHookMiddleware, hooks=[RefuseAll()])
    async with client(outer) as c:
        response = await c.post("/api/v1/chat/completions", json=chat())
    assert response.json()["choices"][0]["message"]["content"] == "refused completion"


async def test_guarded_app_mounted_under_a_prefix_matches_without_it() -> None:
    inner = Starlette(routes=[Route("/chat/completions", handler, methods=["POST"])])
    inner.add_middleware(LLMHookMiddleware, hooks=[RefuseAll()], routes={"/chat/completions": "embeddings"})
    outer = Starlette(routes=[Mount("/v1", app=inner)])
    async with client(outer) as c:
        response = await c.post("/v1/chat/completions", json=chat())
    assert response.status_code == 400  # an embeddings refusal: proves the route path had root_path removed
    assert response.json()["error"]["message"] == "refused embeddings"


async def embeddings_handler(request: Request) -> JSONResponse:
    return JSONResponse({"reached": request.url.path})


@pytest.mark.parametrize(
    ("path", "root_path"),
    [
        ("/v1/embeddings", "/v1/embed"),  # Starlette routes on the whole path: "/v1/embed" is not a segment prefix
        ("/v1/embeddings", "/v1/embeddings"),  # the route path is "" (Starlette: 404); the whole path matches
        ("/v1/embed/v1/embeddings", "/v1/embed"),
    ],
)
async def test_root_path_is_removed_only_on_a_segment_boundary(path: str, root_path: str) -> None:
    app = Starlette(routes=[Route("/v1/embeddings", embeddings_handler, methods=["POST"])])
    app.add_middleware(LLMHookMiddleware, hooks=[RefuseAll()])
    script = Script(body_messages(orjson.dumps({"model": "m", "input": "x"})))
    await app(http_scope(path, root_path=root_path), script.receive, script.send)
    assert script.status == 400
    assert orjson.loads(script.body)["error"]["message"] == "refused embeddings"


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_root_path_not_on_a_boundary_is_guarded_over_uvicorn(http: str) -> None:
    # Regression: uvicorn --root-path /v1/embed and the request target "dings" give the scope path
    # "/v1/embeddings", which Starlette routes to /v1/embeddings; the guard used to match "dings".
    app = Starlette(routes=[Route("/v1/embeddings", embeddings_handler, methods=["POST"])])
    app.add_middleware(LLMHookMiddleware, hooks=[RefuseAll()])
    body = orjson.dumps({"model": "m", "input": "x"})
    async with serve(app, http=http, root_path="/v1/embed") as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST dings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
    head, _, answer = raw.partition(b"\r\n\r\n")
    assert b'"reached"' not in answer, raw
    if http == "httptools":
        assert head.startswith(b"HTTP/1.1 400 Bad Request"), raw  # its parser refuses the target itself
    else:
        assert orjson.loads(answer)["error"]["message"] == "refused embeddings", raw


async def test_unguarded_requests_get_the_very_same_scope_receive_and_send() -> None:
    seen: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = LLMHookMiddleware(app, hooks=[RefuseAll()])
    for scope in (
        http_scope("/v1/models", method="GET"),
        http_scope("/v1/files"),
        http_scope("/v1/chat/completions", method="GET"),
    ):
        script = Script(body_messages(b"{}"))
        await middleware(scope, script.receive, script.send)
        assert seen[-1] == (scope, script.receive, script.send)
        assert script.receive_calls == 0
        assert script.status == 204


async def test_get_models_passes_through() -> None:
    app, down = guarded(RefuseAll())
    async with client(app) as c:
        response = await c.get("/v1/models")
    assert response.json()["object"] == "list"
    assert down.received[0].path == "/v1/models"


async def test_websocket_scope_passes_through() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    middleware = LLMHookMiddleware(app, hooks=[RefuseAll()])
    scope = {"type": "websocket", "path": "/v1/chat/completions", "headers": []}
    await middleware(scope, None, None)  # type: ignore[arg-type]
    assert seen == [scope]


async def test_lifespan_reaches_the_app() -> None:
    down = Downstream()
    app = LLMHookMiddleware(down, hooks=[RefuseAll()])
    async with LifespanManager(app):
        assert down.lifespan == ["lifespan.startup"]
    assert down.lifespan == ["lifespan.startup", "lifespan.shutdown"]


async def test_lifespan_of_a_starlette_app_with_the_middleware_added() -> None:
    events: list[str] = []

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(routes=[Route("/v1/chat/completions", handler, methods=["POST"])], lifespan=lifespan)
    app.add_middleware(LLMHookMiddleware, hooks=[RefuseAll()])
    async with LifespanManager(app) as manager:
        async with client(manager.app) as c:
            response = await c.post("/v1/chat/completions", json=chat())
        assert orjson.loads(response.content)["object"] == "chat.completion"
    assert events == ["startup", "shutdown"]


@pytest.mark.parametrize("header", ["x-http-method-override", "x-http-method", "x-method-override"])
async def test_method_override_to_post_is_guarded_like_a_post(header: str) -> None:
    app, down = guarded(RefuseAll())
    async with client(app) as c:
        response = await c.request("GET", "/v1/chat/completions", json=chat(), headers={header: "post"})
    assert response.json()["choices"][0]["message"]["content"] == "refused completion"
    assert down.received == []


async def test_plain_get_on_a_guarded_path_passes_through() -> None:
    app, down = guarded(RefuseAll())
    async with client(app) as c:
        response = await c.get("/v1/chat/completions", headers={"x-http-method-override": "DELETE"})
    assert response.status_code == 200
    assert down.received[0].path == "/v1/chat/completions"


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_method_override_to_put_or_patch_passes_through_like_a_real_one(method: str) -> None:
    # Regression: X-HTTP-Method-Override: PUT on a GET was guarded as a write while a real PUT passed through.
    app, down = guarded(RefuseAll())
    async with client(app) as c:
        overridden = await c.request(
            "GET", "/v1/chat/completions", json=chat(), headers={"x-http-method-override": method}
        )
        real = await c.request(method, "/v1/chat/completions", json=chat())
    assert overridden.status_code == real.status_code == 200
    assert overridden.json()["object"] == "list"  # the downstream's own answers, for a GET and a write
    assert real.json()["choices"][0]["message"]["content"] == "Hello from the model"
    assert [received.state for received in down.received] == [None, None]  # no guarded request reached it


@pytest.mark.parametrize("method", ["post", "Post", "pOST", "po\u017ft", " POST "])
async def test_a_post_spelt_in_another_case_is_guarded(method: str) -> None:
    # Regression: uvicorn with h11 passes the method as the client wrote it, and a framework that upper-cases it
    # (Django) ran its POST view on a "post" the guard had let through.
    app, down = guarded(RefuseAll())
    script = Script(body_messages(orjson.dumps(chat())))
    await app(http_scope(method=method), script.receive, script.send)
    assert orjson.loads(script.body)["choices"][0]["message"]["content"] == "refused completion"
    assert down.received == []


@pytest.mark.parametrize("value", [b"po\xc5\xbft", b"po\xef\xac\x85", b"\xa0POST", b"POST\x85"])
async def test_a_method_override_a_framework_may_decode_as_post_is_guarded(value: bytes) -> None:
    # "po\u017ft" and "po\ufb05" (a long s, a ligature) in UTF-8, which str.upper() makes "POST"; a latin-1 no-break
    # space or next line, which str.strip() removes.
    app, down = guarded(RefuseAll())
    script = Script(body_messages(orjson.dumps(chat())))
    headers = [(b"content-type", b"application/json"), (b"x-http-method-override", value)]
    await app(http_scope(method="GET", headers=headers), script.receive, script.send)
    assert orjson.loads(script.body)["choices"][0]["message"]["content"] == "refused completion"
    assert down.received == []
