"""``multipart/form-data`` bodies for hooks: parse the form, hand hooks its text fields, re-encode it
(docs/reference.md#multipart).

``/audio/transcriptions`` and ``/audio/translations`` requests are forms, not JSON: the OpenAI SDK sends the
audio as a file part and ``model``, ``prompt``, ``temperature``, ``timestamp_granularities[]``... as text parts.
Hooks must see and edit them like any other request, so :func:`parse_form` turns the (already read, already
size-bounded) body into a :class:`FormBody` whose ``data`` holds the text fields as a dict and each file as a
descriptor ``{"filename", "content_type", "size"}``; after the hooks ran, :meth:`FormBody.encode` builds a new
form from the edited dict. The file bytes are never copied out of the request body while parsing (each file is a
slice of it) and go downstream byte for byte, with their original part headers; only the text fields change.

Parsing is done by ``python-multipart``, the streaming parser Starlette and FastAPI use, so the middleware and
the app behind it read a form the same way. It is an optional dependency (``pip install
'asgi-llm-guard[multipart]'``) imported only when a form is parsed. A form it cannot parse, a part without a
field name, or a text field that is not UTF-8 is the client's error: :class:`~asgi_llm_guard.errors.GuardError`
400 with a message saying what is wrong.

A form may hold at most 1,000 text fields and 1,000 files (``max_fields``, ``max_files``: Starlette's defaults
for ``request.form()``, so the app behind would refuse more anyway). Parsing stops at the first part over the
limit: a 10 MiB form of 190,000 one-byte fields would otherwise cost seconds of event-loop CPU, and its
re-encoded copy would be twice the size of the request. python-multipart itself bounds each part's headers.

::

    form = parse_form(body, headers[b"content-type"])
    form.data        # {"model": "whisper-1", "prompt": "hi", "timestamp_granularities[]": ["word", "segment"],
                     #  "file": {"filename": "a.wav", "content_type": "audio/wav", "size": 3244}}
    body, content_type = form.encode({**form.data, "prompt": "rewritten"})
"""

from __future__ import annotations

import importlib.util
import logging
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .bodies import forwarded_too_large
from .errors import GuardError

__all__ = ["FormBody", "FormFile", "available", "is_multipart", "parse_form"]

logger = logging.getLogger("asgi_llm_guard")

#: What the middleware logs when it guards the audio routes without python-multipart installed.
MISSING = (
    "the audio routes (/audio/transcriptions, /audio/translations) are guarded, but reading their "
    "multipart/form-data uploads needs python-multipart >= 0.0.13, which is not installed: "
    "pip install 'asgi-llm-guard[multipart]' (until then such uploads are answered with a 501), or stop guarding "
    "them with routes={'/audio/transcriptions': None, '/audio/translations': None, "
    "'/openai/deployments/{deployment}/audio/transcriptions': None, "
    "'/openai/deployments/{deployment}/audio/translations': None}"
)


def available() -> bool:
    """Whether ``python-multipart`` can be imported (checked once, at the middleware's construction)."""
    return importlib.util.find_spec("python_multipart") is not None

_MEDIA_TYPE = b"multipart/form-data"
_DEFAULT_FILE_TYPE = "application/octet-stream"
# Content-Transfer-Encoding values that mean "the bytes as they are" (RFC 7578 4.7 deprecates the others).
_IDENTITY_ENCODINGS = frozenset({b"7bit", b"8bit", b"binary"})


def is_multipart(content_type: bytes | str) -> bool:
    """Whether a ``content-type`` header value is ``multipart/form-data`` (case-insensitive, parameters ignored).

    ``is_multipart(b"Multipart/Form-Data; boundary=x") is True``; ``is_multipart(b"multipart/mixed") is False``.
    """
    if isinstance(content_type, str):
        content_type = content_type.encode("latin-1", "replace")
    media_type = content_type.split(b";", 1)[0].strip(b" \t")
    return media_type.lower() == _MEDIA_TYPE


@dataclass(frozen=True, eq=False)
class FormFile:
    """One file part of a parsed form. Its bytes are a slice of the request body, not a copy."""

    name: str
    """The form field name (``"file"`` for audio uploads)."""
    filename: str
    """The ``filename`` of its ``Content-Disposition`` (undecodable UTF-8 bytes replaced)."""
    content_type: str
    """Its ``Content-Type``, ``application/octet-stream`` when the part has none (RFC 7578 4.4)."""
    headers: tuple[tuple[bytes, bytes], ...]
    """The part's headers as sent; they are re-emitted verbatim by :meth:`FormBody.encode`."""
    _source: bytes
    _start: int
    _end: int

    @property
    def size(self) -> int:
        """Its length in bytes."""
        return self._end - self._start

    @property
    def content(self) -> memoryview:
        """Its bytes, as a read-only view on the request body."""
        return memoryview(self._source)[self._start : self._end]

    def descriptor(self) -> dict[str, Any]:
        """What hooks see in place of the bytes: ``{"filename": ..., "content_type": ..., "size": ...}``."""
        return {"filename": self.filename, "content_type": self.content_type, "size": self.size}

    def _contains(self, needle: bytes) -> bool:
        return self._source.find(needle, self._start, self._end) != -1


class FormBody:
    """A parsed ``multipart/form-data`` body: ``data`` for the hooks, :meth:`encode` for the downstream app.

    ``data`` maps each field name, as sent, to its text (a ``str``; a ``list[str]`` when the field was given
    several times or its name ends in ``[]``, such as ``timestamp_granularities[]``) or, for a file part, to its
    descriptor (a list of descriptors when several files share the name). Fields keep the order they came in.
    """

    def __init__(self, data: dict[str, Any], files: list[FormFile]) -> None:
        self.data = data
        self.files: tuple[FormFile, ...] = tuple(files)
        self._files_by_name: dict[str, list[FormFile]] = {}
        for file in files:
            self._files_by_name.setdefault(file.name, []).append(file)

    def file(self, name: str = "file") -> FormFile | None:
        """The first file part named ``name``, if any."""
        found = self._files_by_name.get(name)
        return found[0] if found else None

    def encode(self, data: Mapping[str, Any], max_bytes: int | None = None) -> tuple[bytes, bytes]:
        """The form re-encoded from (possibly edited) ``data``: ``(body, content_type_header_value)``.

        With ``max_bytes``, a form that would be larger raises :class:`~asgi_llm_guard.errors.GuardError` 413
        before it is joined (our part headers and boundary may be longer than the client's, and hooks may
        lengthen fields: the app must not receive more than the middleware's ``max_body_bytes``).

        Parts follow ``data``'s order. A key that named file parts in the parsed form brings back those parts
        with their original headers and bytes (whatever its value, since a descriptor cannot replace the bytes;
        deleting the key or setting it to ``None`` drops them). Any other key is a text field: ``str`` as is,
        ``bool`` as ``"true"``/``"false"``, numbers and other scalars with ``str()``, ``bytes`` as is, a ``dict``
        as JSON text, a list or tuple as one part per item with the same name, ``None`` (also as a list item)
        omitted. Field names are quoted with backslash escapes for ``"`` and ``\\`` (what ``python-multipart``
        undoes) and ``%0D``/``%0A`` for line breaks. The boundary is fresh, random and found in no part.
        """
        parts: list[tuple[bytes, bytes | FormFile]] = []
        for key, value in data.items():
            name = str(key)
            files = self._files_by_name.get(name)
            if files is not None:
                if value is not None:
                    parts.extend((_file_head(file), file) for file in files)
                continue
            head = b'Content-Disposition: form-data; name="' + _quote(name) + b'"\r\n'
            parts.extend((head, text) for text in _text_values(value))

        boundary = _boundary_for(parts)
        delimiter = b"--" + boundary
        chunks: list[bytes | memoryview] = []
        for head, content in parts:
            chunks += (delimiter, b"\r\n", head, b"\r\n")
            chunks.append(content.content if isinstance(content, FormFile) else content)
            chunks.append(b"\r\n")
        chunks += (delimiter, b"--\r\n")
        if max_bytes is not None:
            size = sum(map(len, chunks))
            if size > max_bytes:
                raise forwarded_too_large(size, max_bytes)
        return b"".join(chunks), b"multipart/form-data; boundary=" + boundary


def parse_form(
    body: bytes | bytearray, content_type: bytes, *, max_fields: int = 1000, max_files: int = 1000
) -> FormBody:
    """Parse a ``multipart/form-data`` body with ``python-multipart``'s streaming parser.

    Raises :class:`~asgi_llm_guard.errors.GuardError` 400 when the content type is not ``multipart/form-data``
    or has no boundary, when the form is malformed or truncated (no closing boundary), when it has more than
    ``max_fields`` text fields or ``max_files`` files, when a part has no field name or uses a
    ``Content-Transfer-Encoding`` other than 7bit/8bit/binary, when a name is given both as a file and as text,
    and when a field name or text field is not UTF-8. Without ``python-multipart`` it raises a 501
    :class:`~asgi_llm_guard.errors.GuardError` (the middleware warned at construction: :data:`MISSING`).
    """
    try:
        from python_multipart.multipart import MultipartParser, parse_options_header
    except ImportError as exc:  # without the extra: see docs/routes.md#audio-uploads-multipartform-data
        logger.error("%s", MISSING)
        raise GuardError(501, "This service cannot read multipart/form-data uploads.") from exc

    media_type, options = parse_options_header(content_type)
    if media_type != _MEDIA_TYPE:
        shown = media_type.decode("latin-1") or "none"
        raise GuardError(400, f"expected a multipart/form-data body, got content-type {shown!r}")
    boundary = options.get(b"boundary")
    if not boundary:
        raise GuardError(400, "the multipart/form-data content-type has no boundary parameter")
    if not isinstance(body, bytes):
        body = bytes(body)

    collector = _Collector(body, max_fields, max_files)
    try:
        parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": collector.on_part_begin,
                "on_header_field": collector.on_header_field,
                "on_header_value": collector.on_header_value,
                "on_header_end": collector.on_header_end,
                "on_headers_finished": collector.on_headers_finished,
                "on_part_data": collector.on_part_data,
                "on_part_end": collector.on_part_end,
                "on_end": collector.on_end,
            },
        )
        parser.write(body)
        parser.finalize()
    except ValueError as exc:  # python_multipart's FormParserError and its subclasses are ValueErrors
        raise GuardError(400, f"malformed multipart/form-data body: {exc}") from exc
    if not collector.ended:
        raise GuardError(400, "truncated or malformed multipart/form-data body: the closing boundary is missing")
    return collector.build()


# -- parsing -----------------------------------------------------------------------------------------------


class _Part:
    __slots__ = ("headers", "options", "spans")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.options: dict[bytes, bytes] = {}  # of its Content-Disposition
        # (source, start, end): slices of the body, or of a copy when the parser handed us another buffer.
        self.spans: list[tuple[bytes, int, int]] = []

    def header(self, name: bytes) -> bytes | None:
        for field, value in self.headers:
            if field.lower() == name:
                return value
        return None

    def content(self, body: bytes) -> tuple[bytes, int, int]:
        if not self.spans:
            return body, 0, 0
        if len(self.spans) == 1:
            return self.spans[0]
        joined = b"".join(memoryview(source)[start:end] for source, start, end in self.spans)
        return joined, 0, len(joined)


class _Collector:
    """The parser's callbacks: headers and data spans of each part, in order."""

    def __init__(self, body: bytes, max_fields: int, max_files: int) -> None:
        self.body = body
        self.parts: list[_Part] = []
        self.ended = False
        self._max_fields = max_fields
        self._max_files = max_files
        self._fields = 0
        self._files = 0
        from python_multipart.multipart import parse_options_header

        self._parse_options = parse_options_header
        self._part = _Part()
        self._field = bytearray()
        self._value = bytearray()

    def on_part_begin(self) -> None:
        self._part = _Part()
        self._field.clear()
        self._value.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._part.headers.append((bytes(self._field), bytes(self._value)))
        self._field.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        # Counted as the parts come, so an oversized form stops here instead of being parsed to its end (a
        # GuardError, not a ValueError, passes through parse_form's handler).
        part = self._part
        disposition = part.header(b"content-disposition")
        if disposition is not None:
            part.options = self._parse_options(disposition)[1]
        if b"filename" in part.options:
            self._files += 1
            if self._files > self._max_files:
                raise GuardError(
                    400, f"the multipart/form-data body has too many files: at most {self._max_files} are accepted"
                )
        else:
            self._fields += 1
            if self._fields > self._max_fields:
                raise GuardError(
                    400,
                    f"the multipart/form-data body has too many text fields: at most {self._max_fields} are accepted",
                )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        spans = self._part.spans
        if data is self.body:
            if spans and spans[-1][0] is data and spans[-1][2] == start:
                spans[-1] = (data, spans[-1][1], end)
            else:
                spans.append((data, start, end))
        else:  # a look-behind buffer of the parser: not a slice of the body, so copy it
            spans.append((bytes(data[start:end]), 0, end - start))

    def on_part_end(self) -> None:
        self.parts.append(self._part)
        self._part = _Part()

    def on_end(self) -> None:
        self.ended = True

    def build(self) -> FormBody:
        texts: dict[str, list[str]] = {}
        files: list[FormFile] = []
        file_names: dict[str, list[FormFile]] = {}
        order: dict[str, None] = {}
        for number, part in enumerate(self.parts, 1):
            options = part.options
            raw_name = options.get(b"name")
            if raw_name is None:
                raise GuardError(400, f"part {number} of the multipart/form-data body has no field name")
            name = _decode(raw_name, f"the field name of part {number} of the multipart/form-data body")
            encoding = part.header(b"content-transfer-encoding")
            if encoding is not None and encoding.strip(b" \t").lower() not in _IDENTITY_ENCODINGS:
                raise GuardError(
                    400,
                    f"form field {name!r} uses Content-Transfer-Encoding {encoding.decode('latin-1')!r}, "
                    "which is not supported",
                )
            source, start, end = part.content(self.body)
            if b"filename" in options:
                content_type = (part.header(b"content-type") or b"").strip(b" \t").decode("latin-1")
                file = FormFile(
                    name=name,
                    filename=options[b"filename"].decode("utf-8", "replace"),
                    content_type=content_type or _DEFAULT_FILE_TYPE,
                    headers=tuple(part.headers),
                    _source=source,
                    _start=start,
                    _end=end,
                )
                files.append(file)
                file_names.setdefault(name, []).append(file)
            else:
                text = _decode(memoryview(source)[start:end], f"form field {name!r}")
                texts.setdefault(name, []).append(text)
            if name in texts and name in file_names:
                raise GuardError(400, f"form field {name!r} is sent both as a file and as text")
            order[name] = None

        data: dict[str, Any] = {}
        for name in order:
            if name in file_names:
                descriptors = [file.descriptor() for file in file_names[name]]
                data[name] = descriptors if len(descriptors) > 1 or name.endswith("[]") else descriptors[0]
            else:
                values = texts[name]
                data[name] = values if len(values) > 1 or name.endswith("[]") else values[0]
        return FormBody(data, files)


def _decode(raw: bytes | memoryview, what: str) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise GuardError(400, f"{what} is not valid UTF-8 (invalid byte at offset {exc.start})") from exc


# -- encoding ----------------------------------------------------------------------------------------------


def _quote(value: str) -> bytes:
    quoted = value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "%0D").replace("\n", "%0A")
    return quoted.encode("utf-8")


def _file_head(file: FormFile) -> bytes:
    return b"".join(field + b": " + value + b"\r\n" for field, value in file.headers)


def _text_values(value: Any) -> Iterator[bytes]:
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            if item is not None:
                yield _text(item)
        return
    yield _text(value)


def _text(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (dict, list, tuple)):
        return orjson.dumps(value, default=str)
    return str(value).encode("utf-8")


def _boundary_for(parts: list[tuple[bytes, bytes | FormFile]]) -> bytes:
    while True:
        boundary = b"asgi-llm-guard-" + secrets.token_hex(16).encode("ascii")
        clash = False
        for head, content in parts:
            if boundary in head or (
                content._contains(boundary) if isinstance(content, FormFile) else boundary in content
            ):
                clash = True
                break
        if not clash:
            return boundary
