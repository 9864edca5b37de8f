"""Streamed responses through the streaming hooks (docs/reference.md#hooks, #refusals, #errors, #streaming).

Only used when a streaming hook exists; otherwise SSE bytes pass through untouched. Each ``data:`` event holding
a JSON object is handed to the hooks as a dict; every other event (comments, ``[DONE]``, non-JSON data) goes out
byte for byte. Iterator hooks are chained in hook order and run in one consumer task fed through a small bounded
queue, so a slow hook slows the app down instead of buffering the stream; per-chunk hooks run on what the chain
yields. All events of one app message go out as one client message.

Ending a stream early follows docs/reference.md#refusals, #errors: a refusal becomes a content chunk with the message,
one finish chunk and ``[DONE]`` (for the Responses API, a text delta and the closing events through
``response.completed``); an error becomes ``data: {"error": …}`` and ``[DONE]`` (for the Responses API, inside its
``error`` event). The finish chunk is left out when the app's own already went out, so that exactly one chunk carries
``finish_reason`` (docs/reference.md#stream-refusals). LiteLLM drops the refusal text of text-completion streams and can
leave a stream without its end; here every path ends with ``more_body=False``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol

import orjson

from . import lenient_json
from ._types import Message
from .call import CallState
from .errors import GuardError, Halt, RejectRequest, ResponseClosed, as_error
from .hooks import HOOK_ERRORS, BoundHook
from .sse import BOM, DONE, SSEEvent, SSEParser, encode_event, encode_json

_END = None
_QUEUE_SIZE = 8
#: Seconds the end of a request waits for a cancelled iterator-hook consumer to stop.
_CONSUMER_STOP_GRACE = 5.0

logger = logging.getLogger("asgi_llm_guard")


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class StreamOutput(Protocol):
    """Where the rewritten stream goes: the request's response pipeline (``pipeline.py``)."""

    started: bool  # http.response.start went to the client
    done: bool  # the final body went to the client

    def client_send(self, message: Message) -> Awaitable[None]: ...

    async def emit(self, message: Message) -> None: ...

    async def emit_start(self) -> None: ...

    async def fail(self, outcome: RejectRequest | GuardError, original: BaseException) -> None: ...


def _chunk_hook_pair(hooks: tuple[BoundHook, ...], args: dict[str, Any]) -> tuple[Any, Any] | None:
    """For one direct per-chunk hook with LiteLLM's signature, ``(user_api_key_dict, response)`` or any
    ``(x, response)`` by position: its method and the first argument, which stays the same for the whole stream."""
    if len(hooks) != 1:
        return None
    hook = hooks[0]
    names = hook.positional
    if not hook.direct or hook.keywords or len(names) != 2 or names[1] != "response" or names[0] not in args:
        return None
    return hook.method, args[names[0]]


class StreamRewriter:
    """One SSE response through the streaming hooks; owned by the request's :class:`ResponsePipeline`."""

    def __init__(self, call: CallState, pipeline: StreamOutput) -> None:
        self.call = call
        self.pipeline = pipeline
        self.parser = SSEParser()
        self.per_chunk = call.hooks.streaming
        self.iterators = call.hooks.streaming_iterator
        self.named = False  # events carry `event:` names (the Responses API, Anthropic)
        self.first: dict[str, Any] | None = None
        # What the client has been sent, in the stream's own format, so that ending early stays consistent.
        self.state = call.wire.stream_state(call.model)
        self.observes = self.state.observes_events
        self.finish_marker = self.state.finish_marker
        self._queue: asyncio.Queue[SSEEvent | None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._emitting = asyncio.Lock()  # held by the consumer task while it sends
        self._generators: list[Any] = []  # the iterator chain, to close when the stream ends
        self._done_event: bytes | None = None
        self._source_ended = False  # the iterator chain read the app's stream to its end
        self.lenient = False  # a chunk needed lenient_json: chunks are written back with it
        # [DONE], or the format's last named event (stream_end_events): ...
        self.end_events = call.wire.stream_end_events
        self.saw_done = False  # ...the app sent it: its stream is whole
        self.done_sent = False  # ...it went out: the stream is over for the client, whatever follows
        #: Per-chunk hooks only, on a stream whose events need no bookkeeping: :meth:`feed` may take its fast path.
        self.quick = not self.iterators
        self.idle = False  # `quick`, and nothing pending in the parser
        self.hook_pair = _chunk_hook_pair(self.per_chunk, call.args)
        self._reencoded = False  # the last event went out re-encoded (not as its raw bytes)

    # -- input -------------------------------------------------------------------------------------------

    async def feed(self, body: bytes, more: bool) -> None:
        """Called for each body message the app sends."""
        if self.idle and more:
            # Nearly every message of a stream: one whole event, nothing pending in the parser. Chat and text
            # completions send `data: {…}`, Anthropic and the Responses API `event: name` then `data: {…}`. The
            # same steps as below, without the general machinery around them.
            start = 0  # where the JSON starts: 6 after `data: `, further after a named event's first line
            if body.startswith(b"data: {"):
                if (
                    body.find(b"\n") == len(body) - 2  # the first line break is the next-to-last byte...
                    and body[-1] == 0x0A  # ...and the last one ends the event
                    and body.find(b"\r") < 0
                ):
                    start = 6
            elif body.startswith(b"event: "):
                line = body.find(b"\n")
                if (
                    line > 7
                    and body.startswith(b"data: {", line + 1)
                    and body.find(b"\n", line + 1) == len(body) - 2
                    and body[-1] == 0x0A
                    and body.find(b"\r") < 0
                ):
                    start = line + 7
            try:
                chunk = orjson.loads(body[start:-2]) if start else None
            except orjson.JSONDecodeError:
                chunk = None
            if type(chunk) is dict:
                if self.first is None:
                    self.first = chunk
                try:
                    pair = self.hook_pair
                    if pair is None:
                        chunk = await self._apply_per_chunk(chunk)
                    else:  # _apply_per_chunk for one direct hook, inlined: this runs for every chunk
                        try:
                            result = await pair[0](pair[1], chunk)
                        except HOOK_ERRORS as exc:
                            raise self.call.hook_failed(exc, self.per_chunk[0], "streaming") from None
                        if result is not None:
                            if not isinstance(result, dict):
                                error = self.call.wrong_type(self.per_chunk[0], result, "a dict or None")
                                raise Halt(error, TypeError(error.message))
                            chunk = result
                        if self.observes:  # as _apply_per_chunk does
                            self.state.observe(chunk)
                    try:
                        # A named event keeps its name, as the app sent it (docs/reference.md#sse-parsing)
                        prefix = b"data: " if start == 6 else b"event: " + body[7:start]
                        encoded = prefix + orjson.dumps(chunk) + b"\n\n"
                    except TypeError as exc:
                        raise self.call.unencodable(exc, self.per_chunk, "streaming") from None
                    if start != 6:
                        self.named = True
                        if self.end_events and body[7 : start - 7].decode("utf-8", "replace") in self.end_events:
                            self.saw_done = self.done_sent = True
                    marker = self.finish_marker
                    if marker is not None and encoded.find(marker) >= 0:  # see _encode
                        self.state.finished = True
                except Halt as failed:
                    await self.pipeline.fail(failed.outcome, failed.original)
                    raise ResponseClosed("the stream was ended by a hook") from None
                pipeline = self.pipeline
                if not pipeline.started:
                    await pipeline.emit_start()
                await pipeline.client_send({"type": "http.response.body", "body": encoded, "more_body": True})
                return
        events = self.parser.feed(body) if body else []
        self.idle = self.quick and self.parser.idle
        if self.iterators:
            if self._consumer is None:
                self._queue = asyncio.Queue(_QUEUE_SIZE)
                self._consumer = asyncio.get_running_loop().create_task(self._consume())
            assert self._queue is not None
            for event in events:
                if self.pipeline.done:
                    raise ResponseClosed("the stream was ended by a hook")
                if event.is_done or event.event in self.end_events:
                    self.saw_done = True
                await self._queue.put(event)
            if not more:
                await self._queue.put(_END)
                await self._consumer
            return
        out: list[bytes] = []
        try:
            for event in events:
                chunk = self._parse(event)
                if chunk is None:
                    if event.ends_previous and self._reencoded:
                        continue  # the LF of a CRLF after an event that went out re-encoded, blank line and all
                    out.append(event.raw)
                    self._reencoded = False
                    if event.is_done:
                        self.saw_done = self.done_sent = True
                else:
                    out.append(self._encode(await self._apply_per_chunk(chunk), event))
                    self._reencoded = True
                    if event.event in self.end_events:
                        self.saw_done = self.done_sent = True
        except Halt as failed:
            if self.pipeline.started and out:
                await self._write(b"".join(out))
            await self.pipeline.fail(failed.outcome, failed.original)
            raise ResponseClosed("the stream was ended by a hook") from None
        if not more:
            out.append(self.parser.close())
            await self.pipeline.emit_start()
            await self.pipeline.emit(
                {"type": "http.response.body", "body": b"".join(out), "more_body": False}
            )
        elif out:
            await self._write(b"".join(out))

    def _parse(self, event: SSEEvent) -> dict[str, Any] | None:
        if event.event is not None:
            self.named = True
        data = event.data
        if data is None or (data[:1] != b"{" and not data.lstrip().startswith(b"{")):
            return None  # no JSON object: [DONE], comments, other text pass through as they are
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            # NaN or -Infinity (Python's json writes them, the openai SDK reads them): still the hooks' to see.
            try:
                chunk = lenient_json.loads(data)
            except ValueError:
                return None
            self.lenient = True
        if not isinstance(chunk, dict):
            return None
        if self.first is None:
            self.first = chunk
        return chunk

    # -- hooks -------------------------------------------------------------------------------------------

    async def _apply_per_chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        call = self.call
        for hook in self.per_chunk:
            call.args["response"] = chunk
            if hook.direct:  # run_hook's work, one coroutine less: this runs for every chunk
                try:
                    result = await hook.invoke(call.args)
                except HOOK_ERRORS as exc:
                    raise call.hook_failed(exc, hook, "streaming") from None
            else:
                result = await call.run_hook(hook, call.args, "streaming")
            if result is None:
                continue
            if not isinstance(result, dict):
                error = call.wrong_type(hook, result, "a dict or None")
                raise Halt(error, TypeError(error.message))
            chunk = result
        if self.observes:
            # Only what goes out counts: a refusal continues what the client has seen.
            self.state.observe(chunk)
        return chunk

    def _encode(self, chunk: dict[str, Any], event: SSEEvent | None) -> bytes:
        try:
            if self.lenient:  # the stream has NaN or infinities: written back as the app wrote them
                name = chunk.get("type") if self.named and event is None else None
                encoded = encode_event(
                    lenient_json.dumps(chunk),
                    event=event.event if event is not None else name if isinstance(name, str) else None,
                    id=event.id if event is not None else None,
                    retry=event.retry if event is not None else None,
                )
            elif event is None:
                name = chunk.get("type") if self.named else None
                encoded = encode_json(chunk, event=name if isinstance(name, str) else None)
            elif event.event is None and event.id is None and event.retry is None:  # a plain `data:` event
                encoded = b"data: " + orjson.dumps(chunk) + b"\n\n"  # orjson never writes a line break
            else:  # the event's other fields stay as the app sent them (docs/reference.md#sse-parsing)
                encoded = encode_event(orjson.dumps(chunk), event=event.event, id=event.id, retry=event.retry)
        except TypeError as exc:
            raise self.call.unencodable(exc, self.per_chunk or self.iterators, "streaming") from None
        # The stream's finish is going out (chat: a finish_reason): one scan of bytes we have anyway, instead of
        # looking into each chunk (`find`: about half the time of `in` on a chunk-sized bytes).
        marker = self.finish_marker
        if marker is not None and encoded.find(marker) >= 0:
            self.state.finished = True
        return encoded

    # -- iterator hooks ----------------------------------------------------------------------------------

    async def _source(self) -> AsyncIterator[dict[str, Any]]:
        assert self._queue is not None
        raw_before = False  # the last event went out as its raw bytes (not re-encoded, nor held like [DONE])
        while True:
            event = await self._queue.get()
            if event is _END:
                self._source_ended = True
                return
            if event.ends_previous and not raw_before:
                continue  # the LF of a CRLF after an event that was re-encoded or is held: no blank line of its own
            chunk = self._parse(event)
            raw_before = chunk is None and not event.is_done
            if chunk is not None:
                yield chunk
            elif event.is_done:
                # [DONE] goes last, after whatever the hooks still yield. Without the BOM a first event may start
                # with: a client strips a BOM only at the very start of the stream, and there it already went.
                raw = event.raw
                if raw.startswith(BOM):
                    async with self._emitting:
                        await self._write(BOM)
                    raw = raw[len(BOM):]
                self._done_event = raw
            else:
                async with self._emitting:
                    await self._write(event.raw)

    async def _guarded(self, iterator: Any, hook: BoundHook) -> AsyncIterator[Any]:
        try:
            async for item in iterator:
                yield item
        except Halt:
            raise
        except HOOK_ERRORS as exc:
            raise self.call.hook_failed(exc, hook, "streaming") from None

    async def _chain(self) -> Any:
        call = self.call
        iterator: Any = self._source()
        self._generators.append(iterator)
        for hook in self.iterators:
            call.args["response"] = iterator
            try:
                result = hook.invoke(call.args)
                if not hasattr(result, "__aiter__") and asyncio.iscoroutine(result):
                    result = await result
            except HOOK_ERRORS as exc:
                raise call.hook_failed(exc, hook, "streaming") from None
            if not hasattr(result, "__aiter__"):
                error = call.wrong_type(hook, result, "an async iterator of chunks")
                raise Halt(error, TypeError(error.message))
            iterator = self._guarded(result, hook)
            self._generators += (result, iterator)
        return iterator

    async def _consume(self) -> None:
        try:
            iterator = await self._chain()
            async for chunk in iterator:
                if not isinstance(chunk, dict):
                    hook = self.iterators[-1]
                    error = self.call.wrong_type(hook, chunk, "dict chunks")
                    raise Halt(error, TypeError(error.message))
                chunk = await self._apply_per_chunk(chunk)
                encoded = self._encode(chunk, None)
                async with self._emitting:
                    await self._write(encoded)
                if self.end_events and chunk.get("type") in self.end_events:
                    self.done_sent = True
            done = self._done_event
            if done is None and not self._source_ended and self.call.wire.ends_with_done:
                done = DONE  # an iterator hook stopped before the app's [DONE]: the client still gets one
            tail = (done or b"") + self.parser.close()  # the unterminated tail came after [DONE]
            async with self._emitting:
                await self.pipeline.emit_start()
                await self.pipeline.emit({"type": "http.response.body", "body": tail, "more_body": False})
        except Halt as failed:
            async with self._emitting:
                await self.pipeline.fail(failed.outcome, failed.original)
        finally:
            queue = self._queue
            while queue is not None and not queue.empty():  # wake a producer blocked on a full queue
                queue.get_nowait()
            # Close the chain outermost first. A generator left suspended would be closed by the event loop
            # whenever it is freed, in a task of its own that outlives the request.
            for generator in reversed(self._generators):
                aclose = getattr(generator, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()

    # -- output ------------------------------------------------------------------------------------------

    async def _write(self, body: bytes) -> None:
        pipeline = self.pipeline
        if not pipeline.started:
            await pipeline.emit_start()
        await pipeline.client_send({"type": "http.response.body", "body": body, "more_body": True})

    async def end_with(self, outcome: RejectRequest | GuardError) -> None:
        """End a stream that has started with a refusal or an error, in the stream's own format
        (docs/reference.md#refusals, #stream-errors)."""
        if self.done_sent:
            # After [DONE] the stream is over for the client: no error event, no second [DONE], only the end.
            await self.pipeline.emit({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if isinstance(outcome, RejectRequest) and self.call.wire.refusal_is_answer:
            body = self.state.closing_refusal(outcome.message, self.first)
        else:
            body = self.state.closing_error(as_error(outcome))
        await self.pipeline.emit({"type": "http.response.body", "body": body, "more_body": False})

    async def close(self) -> None:
        """Cancel the consumer task, if the request ends before it did."""
        consumer = self._consumer
        if consumer is not None and not consumer.done() and consumer is not asyncio.current_task():
            async with self._emitting:  # never cancel it halfway through a send: the client would miss a message
                consumer.cancel()
            # Bounded: an iterator hook that swallows its cancellation must not hold the request for as long as it
            # runs on (the client has left, or the stream has ended).
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((consumer,), timeout=_CONSUMER_STOP_GRACE)
            if not consumer.done():
                logger.error(
                    "a streaming iterator hook ignored its cancellation for %gs; it was cancelled again and is left "
                    "to end on its own",
                    _CONSUMER_STOP_GRACE,
                )
                consumer.cancel()
            consumer.add_done_callback(_retrieve)
