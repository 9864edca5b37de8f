"""Incremental Server-Sent Events parsing and encoding for streamed LLM responses.

The middleware feeds :class:`SSEParser` the ``http.response.body`` chunks a downstream app sends (OpenAI
chat and text-completion streams, ``data: {json}`` ... ``data: [DONE]``, and the Responses API's named
events), split at any byte boundary; the parser returns each complete event as soon as its terminating blank
line arrives, parsed per the HTML Living Standard's "event stream interpretation". Every :class:`SSEEvent`
also carries the exact bytes it was parsed from (comments, line endings, BOM and stray blank lines
included), and :meth:`SSEParser.close` hands back any unterminated tail, so the concatenation of all ``raw``
values plus the tail is always the input: events no hook rewrites are forwarded byte-identical instead of
being re-encoded, which keeps the proxy transparent (clients see exactly what the app sent, keep-alive
comments included) and cheap. The parser is linear in the stream length: it never rescans bytes it has
already split into lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

__all__ = ["BOM", "DONE", "SSEEvent", "SSEParser", "encode_event", "encode_json"]

#: The terminating event of OpenAI chat / text-completion streams.
DONE: bytes = b"data: [DONE]\n\n"

#: The UTF-8 byte order mark a stream may start with (a client strips it there, and only there).
BOM: bytes = b"\xef\xbb\xbf"
_BOM = BOM
_LF = 0x0A
_CR = 0x0D
_COLON = 0x3A
_SPACE = 0x20


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event block: its exact bytes plus the fields parsed from them.

    A block of only comments (``: keep-alive``) or only non-data fields is still an event, with ``data`` None,
    so its raw bytes can be passed through. ``id`` is this block's own ``id:`` field (the spec's "last event
    ID" carry-over to later events is the client's business, not the proxy's).
    """

    raw: bytes
    data: bytes | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    @property
    def is_done(self) -> bool:
        """True for the ``data: [DONE]`` sentinel that ends OpenAI chat / text-completion streams."""
        data = self.data
        return data is not None and (data == b"[DONE]" or data.strip() == b"[DONE]")

    @property
    def ends_previous(self) -> bool:
        """True for the LF of a CRLF whose CR ended the previous event at the end of a fed chunk: no event, only
        the last byte of the one before it (already returned, its ``raw`` ending in that CR). Pass it on after
        that event's ``raw`` (the stream stays byte-identical), drop it after a re-encoded one (which ends with
        its own blank line). Without it, the LF would read as an extra blank line, or as the whole unterminated
        tail at the end of the stream, where the unsplit stream has none."""
        return self.raw == b"\n"  # a lone LF is never an event's raw otherwise: a blank line alone dispatches nothing


class SSEParser:
    """Split a byte stream into :class:`SSEEvent` objects, incrementally and losslessly.

    Lines end with CRLF, LF or CR. A CR that ends a fed chunk is treated as a complete line ending at once
    (so an event it terminates is returned without waiting); if the next chunk starts with LF, that LF is the
    second half of the CRLF, one line end with it: inside an event it stays, unparsed, in that event's ``raw``;
    after the event the CR ended, it is returned first, as an :class:`SSEEvent` of its own that
    :attr:`SSEEvent.ends_previous` tells apart (never the start of the next event's ``raw``, nor a tail for
    :meth:`close`). Blank lines with no event before them (extra separators) are kept at the start of the next
    event's ``raw``.
    """

    __slots__ = ("_buf", "_pos", "_start", "_cr", "_bom", "_data", "_event", "_id", "_retry", "_has")

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._buf = bytearray()  # bytes not yet returned: the current event from its first byte
        self._pos = 0  # offset in _buf of the first byte not yet split into lines
        self._start = 0  # offset in _buf where the current event's raw starts (0 between feeds)
        self._cr = False  # the last line ended with a CR at the end of _buf: a leading LF next belongs to it
        self._bom = True  # nothing seen yet: a leading UTF-8 BOM is still possible
        self._data: list[bytes] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._has = False  # the current event has at least one (non-blank) line

    @property
    def idle(self) -> bool:
        """Nothing pending: the next chunk starts a new event, and needs no BOM or CRLF handling."""
        return not self._buf and not self._bom and not self._cr

    def whole_data_event(self, chunk: bytes) -> bool:
        """True when ``chunk`` is exactly one whole ``data:`` event and nothing is pending: what LLM streams send
        nearly always. Such a chunk needs no scan (its data is ``chunk[6:-2]``) and leaves the parser as it was."""
        return (
            not self._buf
            and not self._bom
            and not self._cr
            and chunk.startswith(b"data: ")
            and chunk.find(b"\n") == len(chunk) - 2  # the first line break is the next-to-last byte...
            and chunk[-1] == _LF  # ...and the last one ends the event
            and chunk.find(b"\r") < 0  # (`find` is about twice as fast as `in` here)
        )

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add ``chunk`` and return the events it completes, in order (often none, often one)."""
        if self.whole_data_event(chunk):
            return [SSEEvent(chunk, chunk[6:-2])]
        buf = self._buf
        if self._cr and not buf and chunk[:1] == b"\n":
            # The LF of a CRLF whose CR ended the event just returned: that event's last byte, not the start of
            # the next one (nor, at the end of the stream, an unterminated tail).
            self._cr = False
            rest = self.feed(chunk[1:]) if len(chunk) > 1 else []
            return [SSEEvent(b"\n"), *rest]
        buf += chunk
        if self._cr or self._bom:
            chunk = self._prelude(chunk)
        # Fast exit: no line ends in the new bytes, so no line (and no event) can have completed. Only the new
        # bytes are looked at, which keeps a huge event fed in tiny pieces linear.
        if b"\n" not in chunk and b"\r" not in chunk:
            return []

        pos = self._pos
        if pos == 0 and len(buf) == len(chunk) and type(chunk) is bytes:
            region = chunk  # the common case: the buffer was empty, the chunk is all there is
        else:
            region = bytes(buf[pos:])  # the partial line left over (no line ends in it) plus the new bytes
        cr_mode = b"\r" in region
        lines = region.splitlines(True) if cr_mode else region.split(b"\n")
        last = len(lines) - 1

        events: list[SSEEvent] = []
        start = self._start
        off = pos  # offset in buf where the current line starts
        data = self._data
        event = self._event
        eid = self._id
        retry = self._retry
        has = self._has

        for i, line in enumerate(lines):
            if cr_mode:  # splitlines(True): every element is non-empty and keeps its line ending
                step = len(line)
                end = line[-1]
                if end == _LF:
                    line = line[:-2] if step > 1 and line[-2] == _CR else line[:-1]
                elif end == _CR:
                    line = line[:-1]
                    if i == last:
                        self._cr = True
                else:
                    break  # the unterminated last line: wait for more bytes
            else:  # split(b"\n"): every element but the last ended with LF; the last is unterminated
                if i == last:
                    break
                step = len(line) + 1
            off += step

            if not line:  # blank line: dispatch the event, if there is one
                if has:
                    raw = region[start - pos : off - pos] if start >= pos else bytes(buf[start:off])
                    events.append(SSEEvent(raw, b"\n".join(data) if data else None, event, eid, retry))
                    start = off
                    data = []
                    event = eid = None
                    retry = None
                    has = False
                continue
            has = True
            if line[0] == _COLON:  # comment
                continue
            colon = line.find(b":")
            if colon < 0:
                name = line
                value = b""
            else:
                name = line[:colon]
                vstart = colon + 2 if colon + 1 < len(line) and line[colon + 1] == _SPACE else colon + 1
                value = line[vstart:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value.decode("utf-8", "replace")
            elif name == b"id":
                if b"\x00" not in value:
                    eid = value.decode("utf-8", "replace")
            elif name == b"retry":
                if value.isdigit():  # bytes.isdigit(): ASCII digits only, and False when empty
                    retry = int(value)

        self._data = data
        self._event = event
        self._id = eid
        self._retry = retry
        self._has = has
        if start:
            del buf[:start]  # cheap: CPython drops a bytearray's prefix without moving the rest
            off -= start
        self._start = 0
        self._pos = off
        return events

    def _prelude(self, chunk: bytes) -> bytes:
        """Handle the rare states before scanning: a CR that may pair with a leading LF, a possible BOM.

        Returns the part of ``chunk`` left to look for line ends in.
        """
        if self._cr:
            if not chunk:
                return chunk
            self._cr = False
            if chunk[0] == _LF:  # second half of a CRLF whose CR ended the previous chunk: not a line
                self._pos += 1
                return chunk[1:]
            return chunk
        buf = self._buf
        if len(buf) < 3 and _BOM.startswith(buf):
            return b""  # maybe a BOM split across chunks: decide once three bytes are in
        self._bom = False
        if buf.startswith(_BOM):
            self._pos = 3  # stays in raw, but is not part of the first field name
        return chunk

    def close(self) -> bytes:
        """Return the unparsed tail (an event no blank line ended) verbatim, and reset for a new stream."""
        tail = bytes(self._buf)
        self._reset()
        return tail


def _check_field(name: str, value: str) -> bytes:
    encoded = value.encode()
    if b"\n" in encoded or b"\r" in encoded:
        raise ValueError(f"SSE {name} must not contain a line break: {value!r}")
    return encoded


def encode_event(
    data: bytes | str, *, event: str | None = None, id: str | None = None, retry: int | None = None
) -> bytes:
    """Encode one event: ``event: x\\n`` (if given), ``id:``, ``retry:``, then one ``data: `` line per line of
    ``data`` (split on CRLF, CR and LF), then a blank line. Lines end with LF.

    Raises ValueError for an ``event`` or ``id`` with a line break (it would corrupt the stream), an ``id``
    with NUL (a client would ignore it) or a negative ``retry``.
    """
    if isinstance(data, str):
        data = data.encode()
    out = bytearray()
    if event is not None:
        out += b"event: " + _check_field("event", event) + b"\n"
    if id is not None:
        if "\x00" in id:
            raise ValueError(f"SSE id must not contain NUL: {id!r}")
        out += b"id: " + _check_field("id", id) + b"\n"
    if retry is not None:
        if retry < 0:
            raise ValueError(f"SSE retry must be >= 0: {retry!r}")
        out += b"retry: %d\n" % retry
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    out += b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"
    return bytes(out)


def encode_json(obj: object, *, event: str | None = None) -> bytes:
    """``encode_event(orjson.dumps(obj), event=event)``; orjson escapes line breaks: one data line."""
    dumped = orjson.dumps(obj)
    if event is None:
        return b"data: " + dumped + b"\n\n"
    return b"event: " + _check_field("event", event) + b"\ndata: " + dumped + b"\n\n"
