"""Streamed responses through the streaming hooks (SPEC 2, 4, 5 and 6).

Only used when a streaming hook exists; otherwise SSE bytes pass through untouched. Each ``data:`` event holding
a JSON object is handed to the hooks as a dict; every other event (comments, ``[DONE]``, non-JSON data) goes out
byte for byte. Iterator hooks are chained in hook order and run in one consumer task fed through a small bounded
queue, so a slow hook slows the app down instead of buffering the stream; per-chunk hooks run on what the chain
yields. All events of one app message go out as one client message.

Ending a stream early follows SPEC 4/5: a refusal becomes a content chunk with the message, one finish chunk and
``[DONE]`` (for the Responses API, a text delta and the closing events through ``response.completed``); an error
becomes ``data: {"error": …}`` and ``[DONE]`` (for the Responses API, inside its ``error`` event). The finish chunk
is left out when the app's own already went out, so that exactly one chunk carries ``finish_reason`` (SPEC 8).
LiteLLM drops the refusal text of text-completion streams and can leave a stream without its end; here every path
ends with ``more_body=False``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from .errors import GuardError, Halt, RejectRequest, ResponseClosed
from .hooks import HOOK_ERRORS, BoundHook
from .responses import chat_chunk, new_id, responses_closing_events, responses_object, text_completion
from .sse import BOM, DONE, SSEEvent, SSEParser, encode_event, encode_json

if TYPE_CHECKING:
    from .middleware import GuardedCall
    from .pipeline import ResponsePipeline

_END = None
#: The call types whose streams end with ``data: [DONE]`` (chat and text completions, SPEC 4).
_ENDED_BY_DONE = frozenset({"completion", "text_completion"})
_QUEUE_SIZE = 8


def error_events(
    outcome: RejectRequest | GuardError, call_type: str, sequence: int | None
) -> Iterator[bytes]:
    """The events that end a stream with an error (SPEC 5): ``data: {"error": …}`` and ``[DONE]``; for the
    Responses API, its ``error`` event, whose data also holds the ``"error"`` envelope: the ``openai`` SDK raises
    ``APIError`` only from that key, and reads a Responses API ``error`` event as one more event of the stream."""
    if isinstance(outcome, RejectRequest):
        outcome = GuardError(400, outcome.message)
    envelope = orjson.loads(outcome.body())
    if call_type == "responses":
        yield encode_json(
            {
                "type": "error",
                "code": str(outcome.status_code),
                "message": outcome.message,
                "param": outcome.param,
                "sequence_number": sequence or 0,
                **envelope,
            },
            event="error",
        )
    else:
        yield encode_json(envelope)
    yield DONE


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

    def __init__(self, call: GuardedCall, pipeline: ResponsePipeline) -> None:
        self.call = call
        self.pipeline = pipeline
        self.parser = SSEParser()
        self.per_chunk = call.hooks.streaming
        self.iterators = call.hooks.streaming_iterator
        self.named = False  # events carry `event:` names (the Responses API)
        self.first: dict[str, Any] | None = None
        self.finished = False  # a chunk with a `finish_reason` went out: a refusal adds no second one (SPEC 8)
        # Responses API bookkeeping, so a refusal can close the stream with consistent events.
        self.response: dict[str, Any] | None = None
        self.sequence = 0
        self.items: dict[int, dict[str, Any]] = {}  # output_index: the item as sent (added, then done)
        self.unfinished: set[int] = set()  # the output_index of items added and not done
        self.message: int | None = None  # the output_index of the message item still open, if any
        self.parts: list[dict[str, Any]] = []  # its finished content parts
        self.part_count = 0  # its content parts added
        self.part_open = False  # its last part is an open output_text part...
        self.text = ""  # ...holding this text so far
        self._queue: asyncio.Queue[SSEEvent | None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._emitting = asyncio.Lock()  # held by the consumer task while it sends
        self._generators: list[Any] = []  # the iterator chain, to close when the stream ends
        self._done_event: bytes | None = None
        self._source_ended = False  # the iterator chain read the app's stream to its end
        self.saw_done = False  # the app sent its [DONE]: its stream is whole
        self.done_sent = False  # the app's [DONE] went out: the stream is over for the client, whatever follows
        #: Per-chunk hooks only, on a stream whose events need no bookkeeping: :meth:`feed` may take its fast path.
        self.quick = not self.iterators and call.call_type != "responses"
        self.idle = False  # `quick`, and nothing pending in the parser
        self.hook_pair = _chunk_hook_pair(self.per_chunk, call.args)

    # -- input -------------------------------------------------------------------------------------------

    async def feed(self, body: bytes, more: bool) -> None:
        """Called for each body message the app sends."""
        if (
            self.idle
            and more
            and body.startswith(b"data: {")
            and body.find(b"\n") == len(body) - 2  # the first line break is the next-to-last byte...
            and body[-1] == 0x0A  # ...and the last one ends the event
            and body.find(b"\r") < 0
        ):
            # Nearly every chunk of a chat or text-completion stream: one whole `data: {…}` event in one message,
            # nothing pending in the parser. The same steps as below, without the general machinery around them.
            try:
                chunk = orjson.loads(body[6:-2])
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
                    try:
                        encoded = b"data: " + orjson.dumps(chunk) + b"\n\n"
                    except TypeError as exc:
                        raise self.call.unencodable(exc, self.per_chunk, "streaming") from None
                    if encoded.find(b'"finish_reason":"') >= 0:  # see _encode
                        self.finished = True
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
                if event.is_done:
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
                    out.append(event.raw)
                    if event.is_done:
                        self.saw_done = self.done_sent = True
                else:
                    out.append(self._encode(await self._apply_per_chunk(chunk), event))
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
            return None
        if not isinstance(chunk, dict):
            return None
        if self.first is None:
            self.first = chunk
        return chunk

    def _observe_response_event(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("type")
        sequence = chunk.get("sequence_number")
        if isinstance(sequence, int):
            self.sequence = sequence + 1
        index = chunk.get("output_index")
        if index is None:
            if kind == "response.created" and isinstance(chunk.get("response"), dict):
                self.response = chunk["response"]
            return
        if kind == "response.output_text.delta":
            if index == self.message and isinstance(chunk.get("delta"), str):
                self.text += chunk["delta"]
        elif kind == "response.output_item.added" or kind == "response.output_item.done":
            item = chunk.get("item")
            if not isinstance(item, dict) or not isinstance(index, int):
                return
            self.items[index] = item
            if kind == "response.output_item.done":
                self.unfinished.discard(index)
                if index == self.message:
                    self.message = None
                return
            self.unfinished.add(index)
            if item.get("type") == "message" and isinstance(item.get("id"), str):
                self.message, self.parts, self.part_count, self.part_open = index, [], 0, False
        elif index == self.message:
            if kind == "response.content_part.added":
                part = chunk.get("part")
                self.part_count += 1
                self.part_open = isinstance(part, dict) and part.get("type") == "output_text"
                self.text = ""
            elif kind == "response.content_part.done":
                part = chunk.get("part")
                self.parts.append(part if isinstance(part, dict) else {"type": "output_text", "text": self.text})
                self.part_open = False

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
        if self.call.call_type == "responses":
            # Only what goes out counts: a refusal continues the sequence and the text the client has seen.
            self._observe_response_event(chunk)
        return chunk

    def _encode(self, chunk: dict[str, Any], event: SSEEvent | None) -> bytes:
        try:
            if event is None:
                name = chunk.get("type") if self.named else None
                encoded = encode_json(chunk, event=name if isinstance(name, str) else None)
            elif event.event is None and event.id is None and event.retry is None:  # a plain `data:` event
                encoded = b"data: " + orjson.dumps(chunk) + b"\n\n"  # orjson never writes a line break
            else:  # the event's other fields stay as the app sent them (SPEC 6)
                encoded = encode_event(orjson.dumps(chunk), event=event.event, id=event.id, retry=event.retry)
        except TypeError as exc:
            raise self.call.unencodable(exc, self.per_chunk or self.iterators, "streaming") from None
        # A finish chunk is going out. orjson escapes every quote inside a string, so this can only be a key with a
        # string value: one scan of bytes we have anyway, instead of looking into each chunk's choices (`find`: about
        # half the time of `in` on a chunk-sized bytes).
        if encoded.find(b'"finish_reason":"') >= 0:
            self.finished = True
        return encoded

    # -- iterator hooks ----------------------------------------------------------------------------------

    async def _source(self) -> AsyncIterator[dict[str, Any]]:
        assert self._queue is not None
        while True:
            event = await self._queue.get()
            if event is _END:
                self._source_ended = True
                return
            chunk = self._parse(event)
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
            done = self._done_event
            if done is None and not self._source_ended and self.call.call_type in _ENDED_BY_DONE:
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
        """End a stream that has started with a refusal or an error (SPEC 4 and 5)."""
        if self.done_sent:
            # After [DONE] the stream is over for the client: no error event, no second [DONE], only the end.
            await self.pipeline.emit({"type": "http.response.body", "body": b"", "more_body": False})
            return
        call_type = self.call.call_type
        if isinstance(outcome, RejectRequest) and call_type in ("completion", "text_completion", "responses"):
            body = b"".join(self._refusal_events(outcome.message, call_type))
        else:
            body = b"".join(error_events(outcome, call_type, self.sequence))
        await self.pipeline.emit({"type": "http.response.body", "body": body, "more_body": False})

    def _refusal_events(self, message: str, call_type: str) -> Iterator[bytes]:
        first = self.first or {}
        model = self.call.model  # what the client asked for, whatever a hook changed (SPEC 8), not the app's chunks'
        created: int = first["created"] if isinstance(first.get("created"), int) else 0
        if call_type == "responses":
            response = self.response or responses_object("", model, status="in_progress")
            # Every item sent goes into response.completed (the SDK raises on one it saw added and not finished):
            # those that never finished, other than the message the refusal closes, as cut off.
            output = {
                index: {**item, "status": "incomplete"}
                if index in self.unfinished and index != self.message and "status" in item
                else item
                for index, item in self.items.items()
            }
            yield from responses_closing_events(
                message,
                response,
                self.sequence,
                output=output,
                open_message=self.message,
                parts=self.parts,
                content_index=self.part_count - 1 if self.part_open else self.part_count,
                open_text=self.text if self.part_open else None,
            )
            return
        default_id = new_id("chatcmpl-" if call_type == "completion" else "cmpl-")
        stream_id: str = first["id"] if isinstance(first.get("id"), str) else default_id
        # Exactly one chunk of a refused stream carries `finish_reason` (SPEC 8): none more if the app's went out
        # (a hook refusing on the usage chunk, or an iterator hook at the end of the stream).
        if call_type == "completion":
            yield encode_json(chat_chunk(stream_id, created, model, {"content": message}, None))
            if not self.finished:
                yield encode_json(chat_chunk(stream_id, created, model, {}, "stop"))
        else:
            for text, finish in ((message, None), ("", "stop"))[: 1 if self.finished else 2]:
                chunk = text_completion(text, model, stream_id, created, finish_reason=finish)
                del chunk["usage"]
                yield encode_json(chunk)
        yield DONE

    async def close(self) -> None:
        """Cancel the consumer task, if the request ends before it did."""
        consumer = self._consumer
        if consumer is not None and not consumer.done() and consumer is not asyncio.current_task():
            async with self._emitting:  # never cancel it halfway through a send: the client would miss a message
                consumer.cancel()
            with contextlib.suppress(BaseException):
                await consumer
