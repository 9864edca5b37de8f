"""``LLMHookMiddleware``: the ASGI entry point and the flow of one guarded request.

Unguarded traffic (not HTTP, not POST, not a guarded route) reaches the app with the very same ``scope``,
``receive`` and ``send`` after one dict lookup. The route path is ``path`` with ``root_path`` removed on a segment
boundary only, as Starlette's ``get_route_path`` does; where that matches no route, the whole ``path`` is matched
too (a mounted app's router may keep ``root_path``), which guards more than Starlette does, never less.

A guarded request goes: identity (``identity.py`` for an ``auth`` callable) → body (read once, bounded) →
``enforce_user_param`` → pre-call hooks → moderation (before, or raced against the app: ``race.py``) → the app,
which receives the final body (``downstream.py``) and whose response flows back through
:class:`~asgi_llm_guard.pipeline.ResponsePipeline`. The hooks themselves are assembled once, at construction
(``assembly.py``); what differs between wire formats is the request's :class:`~asgi_llm_guard.formats.WireFormat`.
Any failure on the way is reported once to the failure hooks and answered in the form the client can still
receive (docs/reference.md#refusals, #errors).

Differences from the LiteLLM proxy, on purpose: ``enforce_user_param`` answers 400 and rejects ``null`` (LiteLLM
answers 401 and lets ``null`` through); moderation can run before the app (``moderation="before"``) so a blocked
prompt is never sent to a paid model; a broken hook is a 500 naming the hook, not its exception text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ._types import ASGIApp, Message, Receive, Scope, Send
from .assembly import assemble
from .auth import UserAPIKeyAuth, scope_user_id
from .bodies import ClientDisconnected, ReplayedReceive, parse_json_object, read_body, whole_body
from .cache import DualCache
from .call import CallSettings, CallState
from .disconnects import DisconnectWatch
from .downstream import downstream_request
from .errors import GuardError, Halt
from .formats import FORMATS
from .hooks import HOOK_ERRORS, HookSet
from .identity import AuthCallable, authenticate
from .litellm_adapter import note_received
from .multipart import MISSING as MULTIPART_MISSING
from .multipart import FormBody, is_multipart, parse_form
from .multipart import available as multipart_available
from .observe import Observer, combine
from .options import check_options
from .pipeline import ResponsePipeline
from .race import await_stopped, race
from .request_headers import scan_headers, treated_as_post
from .routes import RouteMatch, RouteTable

logger = logging.getLogger("asgi_llm_guard")

MiB = 1024 * 1024


class LLMHookMiddleware:
    """Runs LiteLLM-style call hooks on every OpenAI-compatible request of an ASGI app.

    ::

        app = FastAPI()
        app.add_middleware(LLMHookMiddleware, hooks=[MyHook()], enforce_user_param=True)
        # or, for any ASGI app:
        app = LLMHookMiddleware(app, hooks=["my_hooks.proxy_handler_instance"])

    All options are keyword-only and checked here, so a mistake fails at start-up, not at the first request.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        hooks: Iterable[object] = (),
        enforce_user_param: bool = False,
        routes: Mapping[str, str | None] | None = None,
        max_body_bytes: int = 10 * MiB,
        auth: AuthCallable | None = None,
        cache: DualCache | None = None,
        hook_timeout: float | None = None,
        moderation: str = "parallel",
        expose_hook_errors: bool = False,
        observer: Observer | Iterable[Observer] | None = None,
    ) -> None:
        observer = combine(observer)  # a list of observers is one MultiObserver
        check_options(
            hooks=hooks, enforce_user_param=enforce_user_param, routes=routes, max_body_bytes=max_body_bytes,
            auth=auth, cache=cache, hook_timeout=hook_timeout, moderation=moderation,
            expose_hook_errors=expose_hook_errors, observer=observer,
        )
        self.app = app
        self.observer = observer
        assembly = assemble(hooks, hook_timeout, observer)
        self.hooks: HookSet = assembly.hooks
        #: LiteLLM hooks are configured: fields LiteLLM consumes are kept from the app (litellm_adapter).
        self.litellm_fields = assembly.litellm_fields
        #: The CustomGuardrails among the hooks (docs/guardrails.md); None when there are none, which costs nothing.
        self.guardrails = assembly.guardrails
        self.routes = RouteTable(routes)
        if not multipart_available() and any(FORMATS[name].accepts_multipart for name in self.routes.call_types):
            # Not an ImportError: python-multipart is an extra most services never need, and raising would make
            # everyone without it remove four routes; a warning at start-up names the fix, and an upload on those
            # routes is a 501 in the route's format, never an unguarded request (docs/routes.md).
            logger.warning("%s", MULTIPART_MISSING)
        self.enforce_user_param = enforce_user_param
        self.max_body_bytes = max_body_bytes
        self.auth = auth
        self.cache = cache if cache is not None else DualCache()
        self.moderate_first = moderation == "before"
        self.expose_hook_errors = expose_hook_errors
        self.disconnects = DisconnectWatch()
        # A guardrail that ran adds its header to the response start, so no start passes untouched.
        self.plain_responses = not (self.hooks.touches_response or self.hooks.failure or self.guardrails)
        self.failure_wants_traceback = assembly.failure_wants_traceback
        self.settings = CallSettings(
            self.hooks, observer, expose_hook_errors, self.failure_wants_traceback, self.plain_responses
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        match = None
        if root_path and path[len(root_path) : len(root_path) + 1] == "/" and path.startswith(root_path):
            # The route path: root_path removed on a segment boundary only, as Starlette's get_route_path does
            # (docs/reference.md#route-matching). The whole path is matched too when that finds nothing, so a router
            # that keeps root_path (or one that strips it anyway) cannot be reached around the guard either.
            match = self.routes.match(path[len(root_path) :])
        if match is None:
            match = self.routes.match(path)
        if match is None or (scope["method"] != "POST" and not treated_as_post(scope)):
            await self.app(scope, receive, send)
            return
        await GuardedCall(self, scope, receive, send, match).run()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not getattr(self.cache, "owns_connections", False):
            await self.app(scope, receive, send)
            return

        async def send_closing_cache(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.cache.aclose()
            await send(message)

        await self.app(scope, receive, send_closing_cache)


class GuardedCall(CallState):
    """The flow of one guarded request; never shared between requests."""

    __slots__ = (
        "guard", "scope", "receive", "content_type", "form", "pipeline", "forwarded_headers",
        "_header_error", "_key_digest", "_active", "_watcher", "_watch_args",
    )

    def __init__(
        self, guard: LLMHookMiddleware, scope: Scope, receive: Receive, send: Send, match: RouteMatch
    ) -> None:
        super().__init__(guard.settings, FORMATS[match.call_type], match.params.get("deployment", ""))
        self.guard = guard
        self.scope = scope
        self.receive = receive
        self.form: FormBody | None = None
        self.pipeline = ResponsePipeline(self, send)
        self._active = True
        self._watcher: asyncio.Task[None] | None = None
        self._watch_args: tuple[ReplayedReceive, asyncio.Task[Any]] | None = None
        head = scan_headers(scope["headers"], guard.max_body_bytes, not guard.plain_responses)
        self.forwarded_headers, self.content_type, self._key_digest, self._header_error = head

    # -- the flow ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        host = asyncio.current_task()
        guard = self.guard
        observer = guard.observer
        started = 0.0
        if observer is not None:
            started = time.perf_counter()
            observer.request_started(self.call_type)
        try:
            try:
                auth = guard.auth
                if auth is None:
                    # api_key and user_id, by position: keyword arguments to a class cost a dict per call.
                    self.user = UserAPIKeyAuth(
                        self._key_digest,
                        scope_user_id(self.scope) if "user" in self.scope else None,
                    )
                # With an auth callable the body is read first, so that the request is watched for a disconnect
                # while the callable runs (a hanging key store must not outlive the client); its errors still
                # come before the body's.
                if self._header_error is not None:
                    if auth is not None:
                        await self._authenticate_watched(auth, ReplayedReceive(self.receive), host)
                    raise Halt(self._header_error, self._header_error)
                try:
                    message = await self.receive()
                    body: bytes | bytearray | None = whole_body(message, guard.max_body_bytes)
                    if body is None:  # more to come: read_body takes the first piece over (and frees it)
                        first = [message]
                        del message
                        body = await read_body(self.receive, guard.max_body_bytes, first)
                except GuardError as error:
                    if auth is not None:
                        await self._authenticate_watched(auth, ReplayedReceive(self.receive), host)
                    raise Halt(error, error) from None
                receive = ReplayedReceive(self.receive)
                if auth is not None:
                    await self._authenticate_watched(auth, receive, host)
                self._parse(body)
                if observer is not None:
                    observer.request_parsed(self.call_type, self.model)
                del body  # the parsed data is what counts now; a body at the size limit must not be held twice
                if host is not None and self._watch_args is None:
                    self._watch(receive, host)
                self.args = {
                    "user_api_key_dict": self.user,
                    "cache": guard.cache,
                    "data": self.data,
                    "request_data": self.data,
                    "call_type": self.call_type,
                }
                if guard.guardrails is not None:
                    self.guardrail_run = self.args["guardrail_run"] = guard.guardrails.start(
                        self.data, self.user, self.call_type
                    )
                refused = await self.pre_call() if self.hooks.pre_call else None
                if refused is not None:
                    await self.pipeline.refuse(refused[0], refused[1].name, "pre_call")
                elif self.hooks.moderation and not guard.moderate_first:
                    scope = downstream_request(
                        self, self.scope, self.forwarded_headers, self.form, receive, guard.litellm_fields,
                        guard.max_body_bytes,
                    )
                    await race(self, self.pipeline, guard.app, scope, receive, guard.observer)
                else:
                    if self.hooks.moderation:
                        await self.moderate()  # moderation="before": a blocked prompt never reaches the app
                    # The app is awaited right here: every coroutine layer between the server and the app costs
                    # a little on each call and resume.
                    scope = downstream_request(
                        self, self.scope, self.forwarded_headers, self.form, receive, guard.litellm_fields,
                        guard.max_body_bytes,
                    )
                    pipeline = self.pipeline
                    try:
                        await guard.app(scope, receive, pipeline.send)
                    except HOOK_ERRORS as exc:
                        if isinstance(exc, asyncio.CancelledError) and self.cancelled():
                            raise
                        await pipeline.finish_after_app(exc)  # a CancelledError of the app's own is its failure
                    else:
                        if not pipeline.done or pipeline.trailers_owed:
                            await pipeline.finish_after_app(None)
            except Halt as stop:
                await self.pipeline.fail(stop.outcome, stop.original)
            except ClientDisconnected as exc:
                await self.report_failure(exc)
        except asyncio.CancelledError:
            if not self.client_gone:
                raise
            if sys.version_info >= (3, 11) and host is not None:
                host.uncancel()
            with contextlib.suppress(Exception):
                await self.report_failure(ClientDisconnected())
        finally:
            self._active = False
            if self._watch_args is not None:
                guard.disconnects.discard(self)
            if self._watcher is not None:
                self._watcher.cancel()
            stopping, self.stopping = self.stopping, None
            pipeline = self.pipeline
            if pipeline.stream is not None:
                await pipeline.close()
            if self.guardrail_run is not None:
                self.guardrail_run.finish(499 if self.client_gone else pipeline.status)
            if self.hooks.complete or observer is not None:
                status = 499 if self.client_gone else pipeline.status
                await self.complete(status)
                if observer is not None:
                    observer.request_finished(self.call_type, status, time.perf_counter() - started)
            self._end()
            if stopping:  # last: the answer went out, and the request is otherwise over
                await await_stopped(stopping)

    def _end(self) -> None:
        """Drop the references that tie this request's objects into cycles (the pipeline and its stream point
        back here, exceptions' tracebacks to frames that point here), so plain reference counting frees them as
        the request ends instead of the garbage collector, whose pauses showed in the tail latency."""
        self.pipeline.call = None  # type: ignore[assignment]
        self.pipeline.stream = self.pipeline._feed = None
        self.args = {}
        self.guardrail_run = None
        self._watcher = None
        self._watch_args = None

    def _watch(self, receive: ReplayedReceive, host: asyncio.Task[Any]) -> None:
        """Watch this request for its client's disconnect from now on (see :class:`DisconnectWatch`)."""
        self._watch_args = (receive, host)
        self.guard.disconnects.add(self)

    async def _authenticate_watched(
        self, auth: AuthCallable, receive: ReplayedReceive, host: asyncio.Task[Any] | None
    ) -> None:
        if host is not None:
            self._watch(receive, host)
        self.user = await authenticate(auth, self.scope, self, self.guard.expose_hook_errors)

    def start_watch(self) -> None:
        """Called by the middleware's :class:`DisconnectWatch` for a request still running after a while."""
        if self._active and self._watch_args is not None:
            receive, host = self._watch_args
            self._watcher = asyncio.get_running_loop().create_task(self._watch_disconnect(receive, host))

    async def _watch_disconnect(self, receive: ReplayedReceive, host: asyncio.Task[Any]) -> None:
        """Cancel the request when the client leaves before its response ended (docs/reference.md#disconnects)."""
        await receive.disconnected()
        if self._active and not self.pipeline.done:
            self.client_gone = True
            host.cancel()

    def _parse(self, body: bytes | bytearray) -> None:
        wire = self.wire
        try:
            if wire.accepts_multipart and is_multipart(self.content_type):
                self.form = parse_form(body, self.content_type)
                data = self.form.data
            else:
                data = parse_json_object(body)
        except GuardError as error:
            raise Halt(error, error) from None
        self.data = data
        if self.guard.litellm_fields:
            note_received(data, self.user.metadata)
        if wire.checks_request:
            problem = wire.check_request(data)
            if problem is not None:
                raise Halt(problem, problem)
        self.requested = wire.requested(data)
        model = data.get("model")
        if isinstance(model, str) and model:
            self.model = model
        elif not self.model:
            self.model = "unknown"
        key = wire.end_user_key
        user = data.get(key) if key is not None else wire.end_user(data)
        if self.user.end_user_id is None and isinstance(user, str) and user:
            self.user.end_user_id = user
        if self.guard.enforce_user_param and not (isinstance(user, str) and user):
            param = wire.end_user_param
            missing = GuardError(400, f"'{param}' param not passed in. 'enforce_user_param'=True", param=param)
            raise Halt(missing, missing)
