"""The response side of a guarded request: what the downstream app sends, on its way to the client.

The app gets :meth:`ResponsePipeline.send`. Each response takes one of these paths, chosen from its status, from
which hooks exist and, when a hook must read the answer, from what the body is, so a response no hook needs is
forwarded as it comes (no copy, no parse, no buffer):

- *pass*: forwarded unchanged.
- *success*: a 2xx JSON body with post-call success hooks: collected, parsed, hooked, re-serialised with a
  matching ``content-length``.
- *text*: a 2xx plain-text answer where the API has one (an audio transcription with ``response_format=text``,
  ``srt`` or ``vtt``) with post-call success hooks: they see ``{"text": …}``, and the text they leave goes out.
- *upstream error*: a status >= 400 with failure hooks: collected so the hooks see it (as :class:`UpstreamError`)
  and may replace it.
- *stream*: an event stream with streaming hooks: parsed incrementally and rewritten (see ``streaming.py``); the
  start is held until the first rewritten bytes, so a hook failing on the first chunk still gets a real status.

Which path a 2xx answer takes is not read from its content type when a hook must see it: the ``openai`` SDK parses
a JSON body whatever its label (``text/plain``, none, a BOM first) and an event stream whatever its label, so the
start is held until the body's first bytes say what it is (``{``/``[``: JSON; a field or comment line: an event
stream). An answer a post-call hook must see and cannot (neither JSON nor text it can have, compressed in a way we
cannot read) is replaced by a 502 error, never delivered unchecked (docs/reference.md#unreadable-responses). JSON
that orjson refuses (``NaN``, ``-Infinity``, which Python's ``json`` writes) is read by ``lenient_json`` and
written back the same way.

While moderation hooks run in parallel with the app, everything it sends is held, in order, and released only
when they all pass (docs/reference.md#moderation-race). Held, but bounded: once the bodies held reach :data:`HOLD_LIMIT`
bytes (1 MiB), the app's ``send`` waits until moderation has passed and the held messages went out (backpressure, as a
slow client applies it), so a fast app streaming tens of megabytes during a slow moderation costs 1 MiB of memory, not
all of it; the client could not have received any of it sooner. Whatever the app or a hook does, the client sees a
legal ASGI message sequence: one start, bodies, one final ``more_body=False``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from . import lenient_json
from ._types import Message, Send
from .call import CallState
from .errors import GuardError, Halt, RejectRequest, ResponseClosed, UpstreamError, as_error, log_exception
from .responses import Answer, error_answer, refusal_answer
from .streaming import StreamRewriter

logger = logging.getLogger("asgi_llm_guard")

_PASS, _SUCCESS, _UPSTREAM_ERROR, _STREAM, _SNIFF, _TEXT = range(6)
#: What a body's first bytes say it is (``_sniff``).
_JSON, _SSE, _OTHER, _EMPTY = range(4)
#: The SSE field names a stream's first line may carry (a compliant client reads any of them, `:` starts a comment).
_SSE_FIELDS = (b"data", b"event", b"id", b"retry")
#: Messages with which the server, not the app, sends the body (the ASGI pathsend and zero-copy extensions).
_BODYLESS_SENDS = frozenset({"http.response.pathsend", "http.response.zerocopysend"})
_JSON_OPENERS = (b"{", b"[")
_SNIFF_BYTES = 16  # enough to tell `retry:` from a word; the rest of the body is never looked at here

#: Body bytes held while moderation runs before the app's ``send`` waits for moderation to pass.
HOLD_LIMIT = 1024 * 1024


def _content_type(start: Message) -> bytes:
    for name, value in start.get("headers", ()):
        if name.lower() == b"content-type":
            return bytes(value)
    return b""


def _is_sse(content_type: bytes) -> bool:
    return content_type.split(b";", 1)[0].strip().lower() == b"text/event-stream"


def _decode(body: bytes, encoding: bytes) -> bytes | None:
    """A gzip/deflate body decoded, the body itself for identity, ``None`` for encodings we cannot read."""
    encoding = encoding.strip().lower()
    if encoding in (b"", b"identity"):
        return body
    try:
        if encoding in (b"gzip", b"x-gzip"):
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == b"deflate":
            return zlib.decompress(body)
    except zlib.error:
        return None
    return None


class ResponsePipeline:
    """The downstream app's ``send`` for one guarded request."""

    __slots__ = (
        "call", "client_send", "status", "started", "done", "_passing", "_app_started", "_app_done", "_held",
        "_held_since", "_mode", "_start", "_sent_start", "_chunks", "stream", "_feed", "_last_body", "_body_before",
        "_trailers_sent", "_held_bytes", "_hold_limit", "_resume", "_dropped", "_head",
    )

    def __init__(self, call: CallState, send: Send) -> None:
        self.call = call
        self.client_send = send  # the client's own: body messages that are neither first nor last go straight to it
        self.status = 500  # what the client was sent; 500 until a start goes out
        self.started = False  # http.response.start went to the client
        self.done = False  # the final body went to the client
        self._passing = False  # bodies go straight to the client: the fast path of send()
        self._sent_start: Message | None = None
        self._app_started = False
        self._app_done = False
        self._held: list[Message] | None = None
        self._held_since = 0.0
        self._held_bytes = 0
        self._hold_limit = HOLD_LIMIT
        self._resume: asyncio.Future[None] | None = None  # what an app held at the limit awaits
        self._dropped = False  # moderation rejected: what the app sends from now on is discarded
        self._mode = _PASS
        self._start: Message | None = None
        self._chunks: list[bytes] = []
        self.stream: StreamRewriter | None = None
        self._feed: Callable[[bytes, bool], Awaitable[None]] | None = None  # the rewriter's, while it takes chunks
        # The last two body messages that went out as the app sent them: whether the stream ended with an event, or
        # with [DONE], is judged on both joined, since the app may send an event in pieces (a CRLF split after its CR
        # leaves only the LF in the last message; an empty message may follow [DONE]). Kept without a test per
        # chunk: the pass-through path pays one assignment a chunk for it.
        self._last_body: Message | None = None
        self._body_before: Message | None = None
        self._trailers_sent = False  # the final http.response.trailers went to the client
        self._head: bytes | None = None  # while sniffing: the body's first bytes, BOM and leading whitespace dropped

    # -- to the client -----------------------------------------------------------------------------------

    @property
    def trailers_owed(self) -> bool:
        """The start that went to the client announced trailers (``"trailers": True``) and the final trailers
        message has not followed yet: the server holds the response open until it does."""
        start = self._sent_start
        return start is not None and bool(start.get("trailers", False)) and not self._trailers_sent

    @property
    def is_sse(self) -> bool:
        """Whether the response that went out is an event stream (only asked when something went wrong)."""
        return self._sent_start is not None and _is_sse(_content_type(self._sent_start))

    async def emit(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            run = self.call.guardrail_run
            if run is not None and run.applied:
                message = _with_header(message, run.header())
            self.started = True
            self.status = message["status"]
            self._sent_start = message
        elif kind == "http.response.body":
            self._body_before, self._last_body = self._last_body, message
            if not message.get("more_body", False):
                self.done = True
                self._feed = None
        await self.client_send(message)

    async def answer(self, answer: Answer) -> None:
        """Send an answer the middleware wrote itself (a refusal or an error), start and body."""
        status, headers, body = answer
        start: Message = {"type": "http.response.start", "status": status, "headers": headers}
        run = self.call.guardrail_run
        if run is not None and run.applied:
            start = _with_header(start, run.header())
        self.started, self.status, self._sent_start = True, status, start
        await self.client_send(start)
        self.done = True
        self._feed = None
        await self.client_send({"type": "http.response.body", "body": body, "more_body": False})

    async def emit_start(self) -> None:
        """Send the held start message, if one is held."""
        start, self._start = self._start, None
        if start is not None:
            await self.emit(start)

    # -- moderation hold ---------------------------------------------------------------------------------

    def hold(self, limit: int = HOLD_LIMIT) -> None:
        """Hold what the app sends until :meth:`release` or :meth:`drop`; at ``limit`` body bytes its ``send``
        waits."""
        self._held = []
        self._held_since = 0.0
        self._held_bytes = 0
        self._hold_limit = limit

    def held_for(self) -> float:
        """Seconds the app's response has waited so far (0 if it has not started)."""
        return time.perf_counter() - self._held_since if self._held_since else 0.0

    async def release(self) -> None:
        """Forward what the app sent while moderation ran, in order; later sends go straight through."""
        held = self._held
        assert held is not None
        index = 0
        try:
            while index < len(held):  # the app may add to the list while an earlier message is forwarded
                await self._process(held[index])
                index += 1
        finally:
            self._held = None
            self._resume_app()
        self._passing = self._mode == _PASS and self.started and not self.done
        if self._mode == _STREAM and not self.done and not self._app_done:
            assert self.stream is not None
            self._feed = self.stream.feed

    def drop(self) -> None:
        """Forget what the app sent and discard what it still sends; none of it reaches the client (a moderation
        hook rejected). An app waiting at the hold limit is let go (it is being cancelled anyway)."""
        self._held = []
        self._dropped = True
        self._resume_app()

    def _resume_app(self) -> None:
        resume, self._resume = self._resume, None
        if resume is not None and not resume.done():
            resume.set_result(None)

    async def _hold(self, message: Message) -> None:
        held = self._held
        assert held is not None
        if self._dropped:
            return
        if not self._held_since:
            self._held_since = time.perf_counter()
        held.append(message)
        if message["type"] == "http.response.body":
            self._held_bytes += len(message.get("body", b""))
            if self._held_bytes >= self._hold_limit:
                # Backpressure: the app waits until moderation passed and the held messages went to the client
                # (or until it is cancelled, on a rejection).
                resume = self._resume
                if resume is None:
                    resume = self._resume = asyncio.get_running_loop().create_future()
                await resume

    # -- from the app ------------------------------------------------------------------------------------

    def send(self, message: Message) -> Awaitable[None]:
        """The app's ``send``. A plain function, not a coroutine: on the common paths it hands back the
        client's own awaitable (or the rewriter's), so each message costs one call, not a coroutine more."""
        if self._passing and message["type"] == "http.response.body":
            # Every chunk of a response no hook reads: straight through, two checks.
            if not message.get("more_body", False):
                self._passing = False
                self._app_done = self.done = True
            self._body_before, self._last_body = self._last_body, message
            return self.client_send(message)
        feed = self._feed
        if feed is not None and message["type"] == "http.response.body":
            # Every chunk of a stream the streaming hooks read: to the rewriter, nothing else to decide.
            more = message.get("more_body", False)
            if not more:
                self._app_done = True
                self._feed = None
            return feed(message.get("body", b""), more)
        if (
            message["type"] == "http.response.start"
            and not self._app_started
            and self.call.plain_response
            and self._held is None
            and not self.done
        ):
            # No hook reads responses and nothing is held: the start goes out as it is.
            self._app_started = self.started = self._passing = True
            self.status = message["status"]
            self._sent_start = message
            return self.client_send(message)
        return self._send_other(message)

    async def _send_other(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.trailers" and self._app_done:
            # After the final body, as the ASGI trailers extension orders it; held with the rest while moderation
            # runs, so they keep their place.
            if self._held is not None:
                await self._hold(message)
            else:
                await self._forward_trailers(message)
            return
        if self.done or self._app_done:
            raise ResponseClosed("the response has already ended")
        if kind == "http.response.start":
            if self._app_started:
                raise RuntimeError("ASGI: http.response.start sent twice")
            self._app_started = True
        elif kind == "http.response.body":
            if not self._app_started:
                raise RuntimeError("ASGI: http.response.body sent before http.response.start")
            if not message.get("more_body", False):
                self._app_done = True
        if self._held is not None:
            await self._hold(message)
            return
        if kind == "http.response.body" and self._mode == _STREAM:
            assert self.stream is not None
            await self.stream.feed(message.get("body", b""), message.get("more_body", False))
            return
        await self._process(message)

    async def _process(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            mode = self._mode
            if mode == _PASS:
                await self.emit(message)
                return
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if mode == _STREAM:
                assert self.stream is not None
                await self.stream.feed(body, more)
                return
            if body:
                self._chunks.append(body)
            if mode == _SNIFF:
                if self._head is None and body[:1] in _JSON_OPENERS and self.call.hooks.success:
                    # Nearly every answer a success hook reads: JSON from its first byte, nothing to skip (what
                    # _sniff and _sniffed decide for it, without the calls).
                    self._mode = _SUCCESS
                    if not more:
                        await self._finish_success()
                    return
                kind = self._sniff(body, more)
                if kind is not None:
                    await self._sniffed(kind, more)
                return
            if not more:
                if mode == _SUCCESS or mode == _TEXT:
                    await self._finish_success()
                else:
                    await self._finish_upstream_error()
            return
        if kind == "http.response.start":
            await self._on_start(message)
            return
        if kind == "http.response.trailers":
            await self._forward_trailers(message)
            return
        if kind in _BODYLESS_SENDS and self._mode != _PASS and not self.done:
            # The body as a file the server sends itself: no hook would see it (the middleware does not offer these
            # extensions to the app when hooks read the answer; docs/reference.md#unreadable-responses).
            await self._unreadable("it was sent as a file", "streaming" if self._mode == _STREAM else "post_call",
                                   b"", True)
            if self.done:
                return
        if self._start is not None:  # a message type we do not know, after a held start: the start must go first
            await self.emit_start()
        await self.emit(message)

    async def _forward_trailers(self, message: Message) -> None:
        """The app's trailers, after the final body, when the start the client got announced them; an answer the
        middleware wrote in the app's place announced none, so they are dropped with the rest of the app's."""
        if not self.done or not self.trailers_owed:
            return
        if not message.get("more_trailers", False):
            self._trailers_sent = True
        await self.client_send(message)

    async def end_trailers(self) -> None:
        """Send the final (empty) trailers the client's start announced, when the app can no longer send them."""
        if self.done and self.trailers_owed:
            self._trailers_sent = True
            await self.client_send({"type": "http.response.trailers", "headers": [], "more_trailers": False})

    async def _on_start(self, message: Message) -> None:
        status = message["status"]
        hooks = self.call.hooks
        if status >= 400:
            if hooks.failure:
                self._mode, self._start = _UPSTREAM_ERROR, message
                return
        elif hooks.touches_response and 200 <= status < 300:
            streaming = hooks.streaming or hooks.streaming_iterator
            if streaming and self.call.requested.stream:
                # The client reads the answer as an event stream whatever it is labelled (docs/reference.md#streaming).
                if not _identity(message):
                    self._start = message
                    await self._unreadable("it is a compressed stream", "streaming", b"", True)
                    return
                if not hooks.success:
                    self._stream(message)
                    return
                # A JSON answer to a streamed request (a downstream that ignores `stream`) is the success hooks'
                # to see, not passed through a stream parser that finds no events in it: its first bytes decide
                # (docs/reference.md#unreadable-responses).
                self._mode, self._start, self._head = _SNIFF, message, None
                return
            if not streaming and self.call.requested.stream and _is_sse(_content_type(message)):
                pass  # the stream the client asked for, and no streaming hook: success hooks read no streams
            elif not _identity(message):
                if hooks.success:
                    self._mode, self._start = _SUCCESS, message  # decoded as a whole, or a 502 (_finish_success)
                    return
            else:
                self._mode, self._start, self._head = _SNIFF, message, None
                return
        await self.emit(message)
        self._passing = self._held is None

    def _stream(self, start: Message) -> None:
        headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"]
        self._mode, self._start = _STREAM, {**start, "headers": headers}
        self.stream = StreamRewriter(self.call, self)
        if self._held is None:
            self._feed = self.stream.feed

    def _sniff(self, body: bytes, more: bool) -> int | None:
        """What the body is, from its first bytes (BOM and whitespace skipped); ``None`` until they tell."""
        if not body and self._head is None:
            return None if more else _EMPTY  # nothing yet: a BOM may still come first
        head = body[:_SNIFF_BYTES] if self._head is None else self._head + body[:_SNIFF_BYTES]
        if self._head is None or self._head.startswith(lenient_json.BOM[:1]):
            if more and len(head) < 3 and lenient_json.BOM.startswith(head):
                self._head = head  # maybe a BOM split across messages
                return None
            if head.startswith(lenient_json.BOM):
                head = head[3:]
        head = head.lstrip(b" \t\r\n")
        self._head = head
        if not head:
            return None if more else _EMPTY
        first = head[0]
        if first == 0x7B or first == 0x5B:  # { or [
            return _JSON
        if first == 0x3A:  # a comment line
            return _SSE
        for name in _SSE_FIELDS:
            if head.startswith(name):
                after = head[len(name) : len(name) + 1]
                if after in (b":", b"\n", b"\r"):
                    return _SSE
                if not after and more:
                    return None  # `data` so far
            elif more and name.startswith(head):
                return None  # `da` so far
        return _OTHER

    async def _sniffed(self, kind: int, more: bool) -> None:
        """Take the path the body's first bytes chose, and send it what came so far."""
        call = self.call
        hooks = call.hooks
        streaming = hooks.streaming or hooks.streaming_iterator
        self._head = None
        if kind == _JSON and hooks.success:
            self._mode = _SUCCESS
        elif kind == _OTHER and hooks.success and not call.requested.stream:
            if not call.wire.answers_text:
                await self._unreadable("it is not JSON", "post_call", b"".join(self._chunks), more)
                return
            self._mode = _TEXT
        elif kind == _SSE and hooks.success and not streaming and not call.requested.stream:
            # The client asked for one answer: the openai SDK hands this stream's text to its caller unparsed.
            await self._unreadable("it is an event stream, and the request asked for none", "post_call",
                                   b"".join(self._chunks), more)
            return
        elif (kind == _SSE or kind == _OTHER or (kind == _EMPTY and call.requested.stream)) and streaming:
            assert self._start is not None
            # An event stream, or bytes a client reading one would search for events: the parser finds every
            # event a client would, and forwards the rest as it came.
            self._stream(self._start)
            chunks, self._chunks = self._chunks, []
            assert self.stream is not None
            await self.stream.feed(b"".join(chunks), more)
            return
        else:
            chunks, self._chunks = self._chunks, []
            self._mode = _PASS
            await self.emit_start()
            await self.emit({"type": "http.response.body", "body": b"".join(chunks), "more_body": more})
            self._passing = self._held is None and not self.done
            return
        if not more:
            await self._finish_success()

    async def _unreadable(self, why: str, stage: str, body: bytes, more: bool) -> None:
        """The answer is one a hook must see and cannot: the client gets a 502, never the answer unchecked.

        Only when every hook of the stage is a monitor (a ``logging_only`` guardrail, which never blocks) does
        the answer (``body`` so far) go on without them; they are recorded as not run."""
        self._chunks = []
        self._head = None
        self._mode = _PASS
        hooks = self.call.hooks
        readers = hooks.success if stage == "post_call" else hooks.streaming + hooks.streaming_iterator
        if all(hook.observes_only for hook in readers):
            logger.warning("%s monitors could not read the downstream response (%s): passed on", stage, why)
            await self.emit_start()
            if body or not more:
                await self.emit({"type": "http.response.body", "body": body, "more_body": more})
            self._passing = self._held is None and not self.done
            return
        self._start = None
        error = GuardError(502, f"The downstream app's response could not be checked ({why}).", stage=stage)
        logger.error("%s hooks could not read the downstream response (%s): answered 502", stage, why)
        await self.fail(error, error)

    # -- buffered endings --------------------------------------------------------------------------------

    def _held_headers(self, drop: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
        assert self._start is not None
        return [(k, v) for k, v in self._start.get("headers", ()) if k.lower() not in drop]

    async def _emit_held(self, body: bytes) -> None:
        await self.emit_start()
        await self.emit({"type": "http.response.body", "body": body, "more_body": False})

    async def _finish_success(self) -> None:
        assert self._start is not None
        raw = b"".join(self._chunks)
        self._chunks = []
        encoding = b""
        for name, value in self._start.get("headers", ()):
            if name.lower() == b"content-encoding":
                encoding = value
        decoded = _decode(raw, encoding)
        if decoded is None:
            await self._unreadable("its content-encoding could not be decoded", "post_call", raw, False)
            return
        lenient = text = False
        parsed: Any = None
        if self._mode != _TEXT:
            try:
                parsed = orjson.loads(decoded)
            except orjson.JSONDecodeError:
                try:
                    parsed, lenient = lenient_json.loads(decoded), True
                except ValueError:
                    parsed = None
            text = not isinstance(parsed, (dict, list))
            if text and not (self.call.wire.answers_text and not self.call.requested.stream):
                await self._unreadable("it is not a JSON object or array", "post_call", raw, False)
                return
        if self._mode == _TEXT or text:
            try:
                parsed, text = {"text": decoded.decode("utf-8-sig")}, True
            except UnicodeDecodeError:
                await self._unreadable("it is neither JSON nor UTF-8 text", "post_call", raw, False)
                return
        call = self.call
        response: Any = parsed
        for hook in call.hooks.success:
            call.args["response"] = response
            try:
                result = await call.run_hook(hook, call.args, "post_call")
            except Halt as halt:
                await self.fail(halt.outcome, halt.original)
                return
            if result is None:
                continue
            if isinstance(result, Exception):  # returned rather than raised: the same thing
                await self.fail(call.outcome(result, hook, "post_call"), result)
                return
            response = _as_json_value(result)  # a value orjson cannot write is that hook's 500, below
        try:
            if text:
                body = _as_text(response)
            else:
                body = lenient_json.dumps(response) if lenient else orjson.dumps(response)
        except TypeError as exc:
            stop = call.unencodable(exc, call.hooks.success, "post_call")
            await self.fail(stop.outcome, stop.original)
            return
        start = self._start
        headers = self._held_headers((b"content-length", b"content-encoding"))
        headers.append((b"content-length", str(len(body)).encode()))
        self._start = {**start, "headers": headers}
        await self._emit_held(body)

    async def _finish_upstream_error(self) -> None:
        assert self._start is not None
        body = b"".join(self._chunks)
        self._chunks = []
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self._start.get("headers", ())}
        error = UpstreamError(self._start["status"], body, headers)
        replacement = await self.call.report_failure(error)
        if replacement is not None:
            self._start = None
            await self.answer(error_answer(replacement, self.call.wire))
            return
        await self._emit_held(body)

    # -- failures ----------------------------------------------------------------------------------------

    async def refuse(self, message: str, hook: str, stage: str) -> None:
        """Answer a refusal a hook returned (docs/reference.md#refusals), before anything went to the client. Without
        failure hooks or an observer to tell, no exception is made for it: a refusal is an answer, and often a frequent
        one."""
        call = self.call
        if call.hooks.failure or call.settings.observer is not None:
            refusal = RejectRequest(message)
            refusal.stage, refusal.hook = stage, hook
            await self.fail(refusal, refusal)
            return
        await self.answer(refusal_answer(message, call.wire, call.requested, call.model, stage))

    async def fail(self, outcome: RejectRequest | GuardError, original: BaseException) -> None:
        """End the request with a refusal or an error, in whatever form is still possible.

        Failure hooks see ``original`` first and may replace an error that has not started yet.
        """
        if self.call.hooks.failure:
            replacement = await self.call.report_failure(original)
            # docs/reference.md#failure-hooks: only while the response has not started
            if replacement is not None and not self.started:
                # Still the answer to what that hook's stage did: the stage header stays
                # (docs/reference.md#rejected-header).
                replacement.stage = replacement.stage or outcome.stage
                outcome = replacement
        if self.done:
            return
        call = self.call
        stage = outcome.stage
        observer = call.settings.observer
        if observer is not None:
            refusal = isinstance(outcome, RejectRequest)
            status = 200 if refusal and call.wire.refusal_is_answer else getattr(outcome, "status_code", 400)
            observer.request_rejected(stage, outcome.hook, status, "refusal" if refusal else "error")
        if not self.started:
            self._start = None
            self._chunks = []
            if isinstance(outcome, RejectRequest):
                answer = refusal_answer(outcome.message, call.wire, call.requested, call.model, stage or "pre_call")
                await self.answer(answer)
            else:
                await self.answer(error_answer(outcome, call.wire, stage))
            return
        if self.stream is not None:
            await self.stream.end_with(outcome)
        elif self.is_sse:
            last = self._last_body.get("body", b"") if self._last_body is not None else b""
            if self._body_before is not None:
                last = self._body_before.get("body", b"") + last
            if _ends_the_stream(last, call.wire.stream_end_events):
                # After [DONE] the stream is over for the client: no error event, no second [DONE], only the end.
                await self.emit({"type": "http.response.body", "body": b"", "more_body": False})
                return
            body = call.wire.error_events(as_error(outcome))
            if self._last_body is not None and not _ends_an_event(last):
                # The app stopped halfway through an event: end it, so the error is an event of its own.
                body = b"\n\n" + body
            await self.emit({"type": "http.response.body", "body": body, "more_body": False})
        else:
            await self.emit({"type": "http.response.body", "body": b"", "more_body": False})

    async def finish_after_app(self, exc: BaseException | None) -> None:
        """Leave the client with a complete response after the app returned or raised ``exc``: the start before
        any body, exactly one final body, then the trailers the start announced."""
        if exc is not None and not isinstance(exc, ResponseClosed):
            expose = self.call.settings.expose_hook_errors
            stream = self.stream
            if stream is not None and stream.saw_done and not self.done:
                # The app raised after its own [DONE] (or its format's last event): the stream is whole, and over for
                # the client after it. It ends as if the app had returned: no error event, no second [DONE]
                # (docs/reference.md#stream-errors is for streams cut off).
                log_exception("the downstream app (after its stream's end)", exc, expose=expose)
                await self.call.report_failure(exc)
            else:
                if stream is not None:
                    await stream.close()  # its consumer must not write between our error's start and body
                if not self.done:
                    log_exception("the downstream app", exc, expose=expose)
                    await self.fail(self.call.app_outcome(exc), exc)
                else:
                    log_exception("the downstream app (after its response ended)", exc, expose=expose)
                await self.end_trailers()
                return
        if not self.done:
            if not self._app_started:
                error = GuardError(500, "The downstream app returned without sending a response.")
                await self.fail(error, error)
                return
            if self._held is not None:
                return  # moderation still decides
            # The app returned without its final body: the response ends as that body would have ended it (a
            # buffered JSON body through its hooks, the events an iterator hook still holds, a held start first).
            self._app_done = True
            self._feed = None
            with contextlib.suppress(ResponseClosed):  # a hook ended it: that ending stands
                await self._process({"type": "http.response.body", "body": b"", "more_body": False})
        await self.end_trailers()

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.close()


def _with_header(start: Message, header: tuple[bytes, bytes] | None) -> Message:
    if header is None:
        return start
    headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != header[0]]
    headers.append(header)
    return {**start, "headers": headers}


def _as_text(response: Any) -> bytes:
    """A plain-text answer after its hooks: the ``text`` they left (in place or in what they returned)."""
    text = response.get("text") if isinstance(response, dict) else None
    if isinstance(text, str):
        return text.encode()
    if isinstance(response, str):
        return response.encode()
    raise TypeError(f"a text answer's hooks must leave {{'text': str}}, not {type(response).__name__}")


def _identity(start: Message) -> bool:
    """The body is not compressed (hooks can read it as it comes)."""
    for name, value in start.get("headers", ()):
        if name.lower() == b"content-encoding":
            return value.strip().lower() in (b"", b"identity")
    return True


def _as_json_value(result: Any) -> Any:
    """What a success hook returned, as the new response body: a pydantic model (LiteLLM's ``ModelResponse``)
    as its dump, anything else as it is."""
    if isinstance(result, (dict, list, str)):
        return result
    dump = getattr(result, "model_dump", None)
    return dump() if callable(dump) else result


def _ends_an_event(body: bytes) -> bool:
    """Whether an SSE body ends with an event's blank line (``b"data: x\\n\\n"``), so what follows starts a new
    event. Not sure is ``False``: an extra blank line between events is harmless."""
    if body.endswith(b"\r\n"):
        rest = body[:-2]
    elif body.endswith((b"\n", b"\r")):
        rest = body[:-1]
    else:
        return False
    return rest.endswith((b"\n", b"\r"))


def _ends_the_stream(body: bytes, end_events: frozenset[str]) -> bool:
    """Whether an SSE body's last event ends the stream: ``data: [DONE]``, or one named in ``end_events``
    (whatever its line ends)."""
    if not body.endswith((b"\n", b"\r")):
        return False
    lines = body.rstrip(b"\r\n").replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    last = lines[-1]
    if last.startswith(b"data:") and last[5:].strip() == b"[DONE]":
        return True
    if end_events:
        for line in reversed(lines):
            if not line:
                break  # the event before it
            if line.startswith(b"event:"):
                return line[6:].strip().decode("utf-8", "replace") in end_events
    return False
