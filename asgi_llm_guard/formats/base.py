"""The interface every wire format offers the flow: :class:`WireFormat` and its per-stream :class:`StreamState`.

A wire format is what one API says on the wire (OpenAI chat, text completions, the Responses API, the OpenAI
endpoints that answer a refusal with a 400, Anthropic Messages). The middleware, the response pipeline and the
stream rewriter know nothing about any of them: they ask the request's format where its texts are, who its end
user is, whether a stream was asked for, how a refusal and an error look (as JSON and as events), and, for a
stream that has started, how to close it early. Adding a format (say Gemini's ``generateContent``) is one module
with a :class:`WireFormat` subclass, an entry in ``formats.FORMATS`` and a route in ``routes.DEFAULT_ROUTES``.

Texts are found as :class:`TextSlot` places (a container and a key), so what reads a text can write it back into
the very same place: a mask can never miss a text that a check saw.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from ..errors import GuardError

__all__ = ["ALL_CHANNELS", "RequestedFormat", "StreamState", "StreamText", "TextSlot", "WireFormat", "new_id"]

_ID_PREFIX = secrets.token_hex(6)  # per process, so ids differ across replicas and restarts
_ID_COUNTER = itertools.count()


def new_id(prefix: str) -> str:
    """A unique response id (``chatcmpl-…``, ``cmpl-…``, ``resp_…``, ``msg_…``). Ids need to be unique, not
    secret: a per-process random prefix and a counter, instead of reading the OS's randomness per refusal."""
    return f"{prefix}{_ID_PREFIX}{next(_ID_COUNTER):012x}"


class TextSlot(NamedTuple):
    """A place that holds a text: ``container[key]`` is a ``str``. Read it with :meth:`get`, write it with
    :meth:`set`::

        for slot in formats.FORMATS["completion"].request_text_slots(data):
            slot.set(slot.get().replace("s3cr3t", "[REDACTED]"))
    """

    container: Any
    key: Any

    def get(self) -> str:
        value: str = self.container[self.key]
        return value

    def set(self, value: str) -> None:
        self.container[self.key] = value


class RequestedFormat(NamedTuple):
    """What the client asked for, read before any hook ran: the form a refusal takes (docs/reference.md#refusals)."""

    stream: bool = False
    include_usage: bool = False  # OpenAI's stream_options.include_usage: a refused stream ends with a usage chunk


class StreamState:
    """What one streamed response has sent so far, and how to end it early in its own format.

    The stream rewriter creates one per streamed response (:meth:`WireFormat.stream_state`), shows it every event
    that goes out (:meth:`observe`, only when :attr:`observes_events` says it needs them) and asks it for the
    closing bytes of a refusal or an error once the stream has started.
    """

    #: Whether :meth:`observe` needs every parsed event that goes out (bookkeeping for a consistent close).
    #: Without it, the rewriter may take its fast path over plain ``data: {…}`` events.
    observes_events = False
    #: Bytes whose presence in an encoded event means the stream's finish went out (OpenAI chat: a
    #: ``finish_reason`` with a string value), so a refusal adds no second one; ``None``: not detected that way.
    finish_marker: bytes | None = None

    def __init__(self, wire: WireFormat, model: str) -> None:
        self.wire = wire
        self.model = model  # the model the client asked for: what a refusal names (docs/reference.md#refusals)
        self.finished = False  # the stream's finish went out

    def observe(self, event: dict[str, Any]) -> None:
        """An event (as parsed JSON) is going out to the client."""

    def closing_refusal(self, message: str, first: dict[str, Any] | None) -> bytes:
        """The events that end this stream with ``message`` as the last of the answer; ``first`` is the stream's
        first JSON event, if one was seen. A format whose refusals are 400s ends it with that error."""
        return self.closing_error(GuardError(400, message))

    def closing_error(self, error: GuardError) -> bytes:
        """The events that end this stream with ``error`` (docs/reference.md#stream-errors)."""
        return self.wire.error_events(error)


#: :meth:`StreamText.closes` answer meaning every channel.
ALL_CHANNELS = "all"


class StreamText:
    """How one wire format's stream events carry output text, for a guardrail that holds text back and releases it
    in windows (``holdback.py``, ``docs/guardrails.md``): which channel (choice, content part, block) a delta
    belongs to, which event ends a channel, and how to make a new text event. The default: no text."""

    #: Events carry ``sequence_number`` (the Responses API): inserting or dropping an event renumbers the rest.
    sequenced = False

    def slots(self, chunk: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
        """The text deltas of an event: ``(channel, container, key)``."""
        return []

    def text_only(self, chunk: dict[str, Any]) -> bool:
        """Whether the event carries nothing but its text, so it may be dropped while its text is held back."""
        return False

    def closes(self, chunk: dict[str, Any]) -> list[Any] | str:
        """The channels whose text must all be out before this event (:data:`ALL_CHANNELS` for every channel)."""
        return []

    def carrier(self, template: dict[str, Any], text: str) -> dict[str, Any]:
        """A new text event like ``template`` (an earlier text event of the channel) carrying ``text``."""
        raise NotImplementedError

    def echoes(self, chunk: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
        """Whole texts an event repeats (``(channel, container, key)``): a channel that had no deltas has its text
        only there, and it must be checked there."""
        return []

    def complete(self, chunk: dict[str, Any], emitted: Mapping[Any, str]) -> None:
        """Rewrite, in place, whole texts an event repeats (the Responses API's ``done`` events) to the text that
        was emitted for their channel."""


class WireFormat:
    """One API's wire format, as the flow needs it. Subclasses override what differs from these defaults.

    Instances are shared by every request: they hold no per-request state (that lives in :class:`StreamState`).
    """

    #: Whether a refusal is a normal 200 answer carrying the message (chat-like formats) or a 400 error.
    refusal_is_answer = False
    #: The request field naming the end user, as ``enforce_user_param`` reports it (dotted for a nested one).
    end_user_param = "user"
    #: The top-level field holding the end user, read directly (a dict lookup, not a call, on every request); None
    #: when it is nested, and :meth:`end_user` reads it.
    end_user_key: str | None = "user"
    #: Whether :meth:`check_request` checks anything (asked only then: a call less per request elsewhere).
    checks_request = False
    #: Whether this format's streams end with ``data: [DONE]`` (OpenAI chat and text completions).
    ends_with_done = False
    #: The ``event:`` names that end this format's streams (Anthropic's ``message_stop``, the Responses API's
    #: ``response.completed``): after one, as after ``[DONE]``, the stream is over for the client, and an app that
    #: raises then gets no error event (the SDKs would raise on a message they had received whole).
    stream_end_events: frozenset[str] = frozenset()
    #: Whether the route also takes ``multipart/form-data`` bodies (audio uploads).
    accepts_multipart = False
    #: How this format's stream events carry text, for guardrails (none by default).
    stream_text = StreamText()
    #: Whether the API answers plain text when asked (a transcription's ``response_format`` ``text``, ``srt``,
    #: ``vtt``): post-call hooks then see it as ``{"text": …}``; any other answer they cannot read is a 502.
    answers_text = False

    def __init__(self, call_type: str) -> None:
        self.call_type = call_type

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.call_type!r})"

    # -- the request -----------------------------------------------------------------------------------------

    def check_request(self, data: Mapping[str, Any]) -> GuardError | None:
        """A 400 for a body whose shape this format rules out before any hook sees it, else ``None``."""
        return None

    def requested(self, data: Mapping[str, Any]) -> RequestedFormat:
        """Whether the client asked for a stream (and what else shapes a refused stream)."""
        return _STREAM if data.get("stream") is True else _NOT_STREAM

    def end_user(self, data: Mapping[str, Any]) -> object:
        """The request's end-user field as sent (not checked): ``data[end_user_key]`` by default."""
        return data.get(self.end_user_key) if self.end_user_key is not None else None

    def request_text_slots(self, data: Mapping[str, Any]) -> list[TextSlot]:
        """Every user-visible text of the request, in request order (empty strings left out)."""
        return list(self._request_slots(data)) if isinstance(data, Mapping) else []

    def _request_slots(self, data: Mapping[str, Any]) -> Iterator[TextSlot]:
        return iter(())

    def request_texts(self, data: Mapping[str, Any]) -> list[str]:
        return [slot.get() for slot in self.request_text_slots(data)]

    def guardrail_text_slots(self, data: Mapping[str, Any]) -> list[TextSlot]:
        """The request texts a guardrail checks (``inputs["texts"]``): tool-call arguments left out, since the
        guardrail gets those whole in ``tool_calls`` (docs/reference.md#guardrails)."""
        return [slot for slot in self.request_text_slots(data) if not _is_tool_argument(slot)]

    def tool_calls(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The tool calls the request carries (assistant turns), as the format spells them."""
        return []

    def structured_messages(self, data: Mapping[str, Any]) -> list[Any] | None:
        """The request's conversation as a list of messages, for formats that have one."""
        return None

    def images(self, data: Mapping[str, Any]) -> list[str]:
        """The URLs of images in the request."""
        return []

    # -- the response ----------------------------------------------------------------------------------------

    def response_text_slots(self, body: Any) -> list[TextSlot]:
        """Every text of a non-streamed response body (a parsed JSON object)."""
        return []

    def response_texts(self, body: Any) -> list[str]:
        return [slot.get() for slot in self.response_text_slots(body)]

    def response_tool_calls(self, body: Mapping[str, Any]) -> list[Any]:
        """The tool calls of a non-streamed response body (a parsed JSON object), as the format spells them."""
        return []

    def event_text_slots(self, event: Mapping[str, Any]) -> list[TextSlot]:
        """The new output text one parsed stream event carries (a delta)."""
        return []

    def event_echo_slots(self, event: Mapping[str, Any]) -> list[TextSlot]:
        """Texts a stream event repeats from earlier deltas (a ``…done`` or ``…completed`` event's full text): a
        rewrite of the deltas must be applied here too, or the original text would reach the client anyway."""
        return []

    # -- answers the middleware writes -----------------------------------------------------------------------

    def refusal_json(self, message: str, model: str) -> Any:
        """The refusal as a normal, non-streamed answer (only asked when :attr:`refusal_is_answer`)."""
        raise NotImplementedError

    def refusal_events(self, message: str, model: str, requested: RequestedFormat) -> bytes:
        """The refusal as a whole event stream (only asked when :attr:`refusal_is_answer`)."""
        raise NotImplementedError

    def error_body(self, error: GuardError) -> bytes:
        """The JSON error of docs/reference.md#errors: ``{"error": {"message", "type", "param", "code"}}``."""
        return error.body()

    def error_events(self, error: GuardError) -> bytes:
        """The events that end a started stream with ``error``: ``data: {"error": …}`` then ``data: [DONE]``."""
        return b"data: " + error.body() + b"\n\ndata: [DONE]\n\n"

    def stream_state(self, model: str) -> StreamState:
        return StreamState(self, model)


def _is_tool_argument(slot: TextSlot) -> bool:
    """A function call's ``arguments``, or a custom tool call's ``input``: what a tool gets, not text to read."""
    container, key = slot
    if key == "arguments":
        return True
    return key == "input" and isinstance(container, Mapping) and container.get("type") == "custom_tool_call"


_STREAM = RequestedFormat(True, False)
_NOT_STREAM = RequestedFormat(False, False)
