"""The guarded request body: read once and bounded, parsed, and replayed to the downstream app
(docs/reference.md#request-body).

The body must be a JSON object whatever the ``Content-Type`` says, because many OpenAI-compatible handlers parse
it regardless; a body the guard could not parse must never reach such a handler unguarded. What orjson rejects
(invalid UTF-8, ``NaN``/``Infinity``, nesting deeper than 1024, or deeper than the 254 levels it can write back) is
therefore a 400, not a pass-through. Integers beyond 64 bits are read as floats, by hooks and app alike.
The app receives the re-serialised ``data``, so hooks and app always agree on every value (duplicate keys
included: the last one wins for both).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from ._types import Message, Receive
from .errors import GuardError

_WRITABLE_DEPTH = 254


class ClientDisconnected(Exception):
    """The client went away before the request finished; failure hooks receive this."""

    status_code = 499

    def __init__(self, message: str = "client disconnected") -> None:
        super().__init__(message)
        self.message = message


def whole_body(message: Message, limit: int) -> bytes | None:
    """The body, when the first ``receive()`` message holds all of it (nearly always); ``None`` if more is coming.
    A plain function: the common case costs no coroutine."""
    if message["type"] != "http.request":
        raise ClientDisconnected("client disconnected before sending the request body")
    if message.get("more_body", False):
        return None
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        raise too_large(limit)
    return body


async def read_body(receive: Receive, limit: int, first: list[Message]) -> bytearray:
    """The whole body, at most ``limit`` bytes (413 as soon as more arrive), when its first message (``first[0]``)
    said more is coming. ``first`` is a list this empties, so the caller holds no reference to that message.

    Pieces are appended to one growing buffer, each freed as soon as it is copied, so a large body costs about its
    own size once, not twice (a list of pieces plus their join). orjson and python-multipart read the buffer as
    it is.
    """
    buffer = bytearray(first.pop().get("body", b""))
    if len(buffer) > limit:
        raise too_large(limit)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnected("client disconnected before sending the whole request body")
        buffer += message.get("body", b"")
        if len(buffer) > limit:
            raise too_large(limit)
        if not message.get("more_body", False):
            return buffer


def too_large(limit: int) -> GuardError:
    return GuardError(413, f"Request body is larger than the limit of {limit} bytes.")


def forwarded_too_large(size: int, limit: int) -> GuardError:
    """A body within ``max_body_bytes`` whose re-encoding for the app is not (a form of many tiny fields gets
    longer part headers; hooks may lengthen texts): the app never receives more than the limit."""
    return GuardError(
        413,
        f"Request body as forwarded to the app would be {size} bytes, larger than the limit of {limit} bytes.",
    )


def parse_json_object(body: bytes | bytearray) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    if not body:
        raise GuardError(400, "The request body is empty; send a JSON object.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GuardError(400, f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise GuardError(400, f"The request body must be a JSON object, not a JSON {type(data).__name__}.")
    if len(body) > 2 * _WRITABLE_DEPTH and body.count(b"{") + body.count(b"[") > _WRITABLE_DEPTH:
        # orjson reads 1024 levels but writes 254: refuse here what could not be forwarded, before any hook runs.
        # Only a body with that many brackets can be that deep, so ordinary bodies skip the trial encode.
        try:
            orjson.dumps(data)
        except orjson.JSONEncodeError:
            raise GuardError(400, "The request body is nested too deeply (more than 254 levels).") from None
    return data


class ReplayedReceive:
    """The ``receive`` the downstream app gets: the final body once, then the client's disconnect.

    The middleware itself waits for a disconnect too (to cancel hooks and the app), and ASGI servers differ in
    whether two concurrent ``receive()`` calls both see it (uvicorn's do, hypercorn's queue hands it to one), so
    one caller at a time reads the real ``receive`` and everyone learns the result.
    """

    __slots__ = ("_receive", "_pending", "_disconnect", "_lock")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._pending: Message | None = None
        self._disconnect: Message | None = None
        self._lock: asyncio.Lock | None = None  # made on first need: most requests never wait for a disconnect

    def replay(self, body: bytes) -> None:
        """The body the app's first ``receive()`` returns."""
        self._pending = {"type": "http.request", "body": body, "more_body": False}

    async def __call__(self) -> Message:
        message = self._pending
        if message is not None:
            self._pending = None
            return message
        return await self.disconnected()

    async def disconnected(self) -> Message:
        if self._disconnect is not None:
            return self._disconnect
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while self._disconnect is None:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    self._disconnect = message
            return self._disconnect
