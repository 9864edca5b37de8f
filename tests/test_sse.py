from __future__ import annotations

import re
import time
from collections.abc import Iterable

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_llm_guard.sse import DONE, SSEEvent, SSEParser, encode_event, encode_json

Fields = tuple[bytes | None, str | None, str | None, int | None]


def fields(events: Iterable[SSEEvent]) -> list[Fields]:
    """The events' fields, without the LF of a CRLF split after the event it ended (not an event)."""
    return [(e.data, e.event, e.id, e.retry) for e in events if not e.ends_previous]


def parse_all(stream: bytes) -> tuple[list[SSEEvent], bytes]:
    parser = SSEParser()
    events = parser.feed(stream)
    return events, parser.close()


def parse_pieces(pieces: Iterable[bytes]) -> tuple[list[SSEEvent], bytes]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    return events, parser.close()


def split_at(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(stream)]
    return [stream[a:b] for a, b in zip(points, points[1:], strict=False)]


def bytewise(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


def lossless(events: list[SSEEvent], tail: bytes) -> bytes:
    return b"".join(e.raw for e in events) + tail


# --- a straightforward reference implementation of the spec, on a whole stream, as an oracle ----------------

_EOL = re.compile(rb"\r\n|\r|\n")


def reference(stream: bytes) -> list[Fields]:
    if stream.startswith(b"\xef\xbb\xbf"):
        stream = stream[3:]
    lines = _EOL.split(stream)[:-1]  # the last piece is not terminated: never processed
    out: list[Fields] = []
    data: list[bytes] = []
    event: str | None = None
    id_: str | None = None
    retry: int | None = None
    seen = False
    for line in lines:
        if line == b"":
            if seen:
                out.append((b"\n".join(data) if data else None, event, id_, retry))
            data, event, id_, retry, seen = [], None, None, None, False
            continue
        seen = True
        if line.startswith(b":"):
            continue
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\x00" not in value:
            id_ = value.decode("utf-8", "replace")
        elif name == b"retry" and value and all(48 <= c <= 57 for c in value):
            retry = int(value)
    return out


# --- parsing --------------------------------------------------------------------------------------


def test_single_event() -> None:
    events, tail = parse_all(b'data: {"a": 1}\n\n')
    assert events == [SSEEvent(raw=b'data: {"a": 1}\n\n', data=b'{"a": 1}')]
    assert tail == b""


def test_several_events_in_one_chunk() -> None:
    stream = b"data: 1\n\ndata: 2\n\nevent: x\ndata: 3\n\n"
    events, tail = parse_all(stream)
    assert fields(events) == [(b"1", None, None, None), (b"2", None, None, None), (b"3", "x", None, None)]
    assert [e.raw for e in events] == [b"data: 1\n\n", b"data: 2\n\n", b"event: x\ndata: 3\n\n"]
    assert tail == b""


def test_incomplete_event_is_not_returned_until_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\n") == []
    assert fields(parser.feed(b"\n")) == [(b"1", None, None, None)]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_event_split_at_every_byte_position(eol: bytes) -> None:
    stream = b"event: e\nid: 7\ndata: h\xc3\xa9llo\ndata: two\n\n: ping\n\ndata: [DONE]\n\n"
    stream = stream.replace(b"\n", eol)
    whole, _ = parse_all(stream)
    assert len(whole) == 3
    for cut in range(len(stream) + 1):
        events, tail = parse_pieces([stream[:cut], stream[cut:]])
        assert fields(events) == fields(whole), cut
        assert lossless(events, tail) == stream
    events, tail = parse_pieces(bytewise(stream))
    assert fields(events) == fields(whole)
    assert lossless(events, tail) == stream


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings(eol: bytes) -> None:
    stream = eol.join([b"event: e", b"data: a", b"data: b", b"", b"data: c", b"", b""])
    events, tail = parse_all(stream)
    assert fields(events) == [(b"a\nb", "e", None, None), (b"c", None, None, None)]
    assert events[0].raw == eol.join([b"event: e", b"data: a", b"data: b", b"", b""])
    assert tail == b""


def test_mixed_line_endings_in_one_stream() -> None:
    events, _ = parse_all(b"data: a\rdata: b\r\ndata: c\n\r\n")
    assert fields(events) == [(b"a\nb\nc", None, None, None)]


def test_crlf_split_between_feeds_on_the_blank_line() -> None:
    parser = SSEParser()
    first = parser.feed(b"data: a\r\n\r")
    assert fields(first) == [(b"a", None, None, None)]  # returned at once, not held back
    second = parser.feed(b"\ndata: b\r\n\r\n")
    assert fields(second) == [(b"b", None, None, None)]  # the LF was not a second blank line
    assert lossless(first + second, b"") == b"data: a\r\n\r\ndata: b\r\n\r\n"
    assert second[0].ends_previous and second[1].raw == b"data: b\r\n\r\n"  # the LF ends event a, not starts b
    assert parser.close() == b""


def test_crlf_split_between_feeds_inside_an_event() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []
    events = parser.feed(b"\n\r\n")
    assert fields(events) == [(b"a\nb", None, None, None)]
    assert events[0].raw == b"data: a\r\ndata: b\r\n\r\n"


def test_cr_at_chunk_end_followed_by_a_non_lf_byte() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert fields(parser.feed(b"\r")) == [(b"a", None, None, None)]
    assert fields(parser.feed(b"data: b\r\r")) == [(b"b", None, None, None)]


def test_lf_after_a_cr_cr_dispatch_is_the_blank_lines_crlf() -> None:
    # "data: a\r" + "\r\n": the blank line ends with CRLF; the LF arriving alone is no tail either.
    parser = SSEParser()
    events = parser.feed(b"data: a\r")
    events += parser.feed(b"\r")
    events += parser.feed(b"\n")
    assert fields(events) == [(b"a", None, None, None)]
    assert parser.close() == b""
    assert lossless(events, b"") == b"data: a\r\r\n"


def test_crlf_split_after_the_last_event_leaves_no_tail() -> None:
    # Regression (found by test_arbitrary_sse_streams_in_arbitrary_chunks with random seeds): the LF of the last
    # event's CRLF, arriving alone, came back from close() as an unterminated tail, b"\n", where the unsplit stream
    # has none; after an event a hook re-encoded, it went out as a stray blank line at the end.
    parser = SSEParser()
    first = parser.feed(b"data: a\r\n\r")
    assert fields(first) == [(b"a", None, None, None)]
    rest = parser.feed(b"\n")
    assert [e.raw for e in rest] == [b"\n"] and rest[0].ends_previous
    assert parser.close() == b""
    assert lossless(first + rest, b"") == b"data: a\r\n\r\n"


def test_crlf_split_after_an_event_is_not_the_start_of_the_next_one() -> None:
    parser = SSEParser()
    first = parser.feed(b"data: a\r\n\r")
    rest = parser.feed(b"\n: ping\r\n\r\n: unterminated")
    assert [e.raw for e in rest] == [b"\n", b": ping\r\n\r\n"]
    assert [e.ends_previous for e in first + rest] == [False, True, False]
    assert parser.close() == b": unterminated"


def test_multi_line_data_joined_with_lf() -> None:
    events, _ = parse_all(b"data: line one\ndata: line two\ndata:\ndata: four\n\n")
    assert events[0].data == b"line one\nline two\n\nfour"


def test_comment_lines_are_ignored_but_kept_in_raw() -> None:
    stream = b": hello\ndata: x\n: between\ndata: y\n\n"
    events, _ = parse_all(stream)
    assert fields(events) == [(b"x\ny", None, None, None)]
    assert events[0].raw == stream


def test_comment_only_block_is_an_event_without_data() -> None:
    events, _ = parse_all(b": keep-alive\n\ndata: 1\n\n")
    assert events[0] == SSEEvent(raw=b": keep-alive\n\n", data=None)
    assert fields(events[1:]) == [(b"1", None, None, None)]


def test_event_id_and_retry_fields() -> None:
    events, _ = parse_all(b"event: response.output_text.delta\nid: abc-1\nretry: 3000\ndata: {}\n\n")
    assert fields(events) == [(b"{}", "response.output_text.delta", "abc-1", 3000)]


def test_block_without_data_keeps_its_other_fields() -> None:
    events, _ = parse_all(b"event: ping\nid: 9\n\n")
    assert fields(events) == [(None, "ping", "9", None)]


def test_last_event_and_id_field_win() -> None:
    events, _ = parse_all(b"event: a\nevent: b\nid: 1\nid: 2\ndata: x\n\n")
    assert (events[0].event, events[0].id) == ("b", "2")


def test_fields_do_not_leak_into_the_next_event() -> None:
    events, _ = parse_all(b"event: a\nid: 1\nretry: 5\ndata: x\n\ndata: y\n\n")
    assert fields(events) == [(b"x", "a", "1", 5), (b"y", None, None, None)]


@pytest.mark.parametrize("value", [b"12a", b"-5", b"  5", b"1.5", b"", b"\xd9\xa3"])  # last: Arabic-Indic 3
def test_retry_with_non_digits_is_ignored(value: bytes) -> None:
    events, _ = parse_all(b"retry: 100\nretry:" + value + b"\ndata: x\n\n")
    assert events[0].retry == 100


def test_id_with_nul_is_ignored() -> None:
    events, _ = parse_all(b"id: good\nid: b\x00ad\ndata: x\n\n")
    assert events[0].id == "good"


def test_empty_id_and_event_are_kept_as_empty_strings() -> None:
    events, _ = parse_all(b"event:\nid\ndata: x\n\n")
    assert (events[0].event, events[0].id) == ("", "")


def test_field_without_colon_has_empty_value() -> None:
    events, _ = parse_all(b"data\ndata\n\n")
    assert events[0].data == b"\n"


def test_data_without_space_after_colon() -> None:
    events, _ = parse_all(b'data:{"a":1}\n\n')
    assert events[0].data == b'{"a":1}'


def test_only_one_leading_space_is_removed() -> None:
    events, _ = parse_all(b"data:  two spaces \nevent:\tx\n\n")
    assert events[0].data == b" two spaces "
    assert events[0].event == "\tx"


def test_colon_inside_value_is_kept() -> None:
    events, _ = parse_all(b"data: a: b:c\n\n")
    assert events[0].data == b"a: b:c"


def test_unknown_fields_are_ignored() -> None:
    events, _ = parse_all(b"foo: bar\nData: no\ndata: yes\n\n")
    assert fields(events) == [(b"yes", None, None, None)]


def test_utf8_event_name_is_decoded() -> None:
    events, _ = parse_all("event: héllo\ndata: x\n\n".encode())
    assert events[0].event == "héllo"


def test_done_sentinel() -> None:
    events, _ = parse_all(b'data: {"a":1}\n\ndata: [DONE]\n\n')
    assert [e.is_done for e in events] == [False, True]
    assert events[1].raw == DONE


@pytest.mark.parametrize(
    ("data", "done"), [(b" [DONE] ", True), (b"[DONE]\n", True), (b"[done]", False), (None, False)]
)
def test_is_done_strips_whitespace_only(data: bytes | None, done: bool) -> None:
    assert SSEEvent(raw=b"", data=data).is_done is done


def test_non_json_data_is_returned_as_is() -> None:
    events, _ = parse_all(b"data: just some text { not json\n\n")
    assert events[0].data == b"just some text { not json"


def test_invalid_utf8_does_not_raise() -> None:
    events, _ = parse_all(b"event: \xff\xfe\nid: \xc3\ndata: \xff\n\n")
    assert fields(events) == [(b"\xff", "\ufffd\ufffd", "\ufffd", None)]


def test_bom_is_kept_in_raw_but_not_part_of_the_field_name() -> None:
    stream = b"\xef\xbb\xbfdata: x\n\n"
    events, _ = parse_all(stream)
    assert events == [SSEEvent(raw=stream, data=b"x")]


def test_bom_split_across_chunks() -> None:
    stream = b"\xef\xbb\xbfevent: e\ndata: x\n\n"
    events, tail = parse_pieces(bytewise(stream))
    assert fields(events) == [(b"x", "e", None, None)]
    assert lossless(events, tail) == stream


def test_bom_only_counts_at_stream_start() -> None:
    events, _ = parse_all(b"data: 1\n\n\xef\xbb\xbfdata: 2\n\n")
    assert fields(events) == [(b"1", None, None, None), (None, None, None, None)]


def test_close_returns_unterminated_tail_and_resets() -> None:
    parser = SSEParser()
    assert fields(parser.feed(b"data: 1\n\ndata: 2\n")) == [(b"1", None, None, None)]
    assert parser.close() == b"data: 2\n"
    assert parser.close() == b""
    # reset: the half event is gone and a BOM is accepted again
    assert fields(parser.feed(b"\xef\xbb\xbfdata: 3\n\n")) == [(b"3", None, None, None)]


def test_close_returns_pending_cr() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.close() == b"data: x\r"
    assert fields(parser.feed(b"\ndata: y\n\n")) == [(b"y", None, None, None)]  # no CR is pending any more


def test_extra_blank_lines_go_to_the_next_event_raw() -> None:
    stream = b"\n\ndata: 1\n\n\n\ndata: 2\n\n\n"
    events, tail = parse_all(stream)
    assert fields(events) == [(b"1", None, None, None), (b"2", None, None, None)]
    assert [e.raw for e in events] == [b"\n\ndata: 1\n\n", b"\n\ndata: 2\n\n"]
    assert tail == b"\n"


def test_empty_chunks_are_harmless() -> None:
    parser = SSEParser()
    assert parser.feed(b"") == []
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"") == []
    assert fields(parser.feed(b"\n\r\n")) == [(b"a", None, None, None)]


def test_raw_bytes_preserved_exactly() -> None:
    stream = (
        b"\xef\xbb\xbf: comment\r\n\r\n"
        b"event:  spaced\rid\rretry: x\rdata:a\r\ndata\n\n"
        b"\n\r\n"
        b"foo\ndata: \xe2\x82\xac\n\n"
        b"data: unterminated"
    )
    events, tail = parse_all(stream)
    assert [e.raw for e in events] == [
        b"\xef\xbb\xbf: comment\r\n\r\n",
        b"event:  spaced\rid\rretry: x\rdata:a\r\ndata\n\n",
        b"\n\r\nfoo\ndata: \xe2\x82\xac\n\n",
    ]
    assert tail == b"data: unterminated"
    assert fields(events) == [
        (None, None, None, None),
        (b"a\n", " spaced", "", None),
        ("€".encode(), None, None, None),
    ]
    # split anywhere, a CRLF's LF may come apart from its event's raw, but nothing is lost or changed
    for pieces in (bytewise(stream), split_at(stream, range(0, len(stream), 5))):
        split_events, split_tail = parse_pieces(pieces)
        assert lossless(split_events, split_tail) == stream
        assert fields(split_events) == fields(events)
        assert split_tail == tail


# --- encoding -------------------------------------------------------------------------------------


def test_done_constant() -> None:
    assert DONE == b"data: [DONE]\n\n"
    assert parse_all(DONE)[0][0].is_done


def test_encode_event_layout() -> None:
    assert encode_event("a\r\nb\rc\nd", event="e", id="1", retry=5) == (
        b"event: e\nid: 1\nretry: 5\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    )
    assert encode_event(b"x") == b"data: x\n\n"
    assert encode_event("") == b"data: \n\n"
    assert encode_event("a\n") == b"data: a\ndata: \n\n"


@pytest.mark.parametrize(
    "kwargs", [{"event": "a\nb"}, {"event": "a\rb"}, {"id": "a\nb"}, {"id": "a\x00b"}, {"retry": -1}]
)
def test_encode_event_rejects_fields_that_would_break_the_stream(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        encode_event("x", **kwargs)  # type: ignore[arg-type]


def test_encode_event_round_trip() -> None:
    encoded = encode_event(" héllo\r\nworld\r", event="response.output_text.delta", id="7", retry=10)
    events, tail = parse_all(encoded)
    assert fields(events) == [(" héllo\nworld\n".encode(), "response.output_text.delta", "7", 10)]
    assert events[0].raw == encoded and tail == b""


def test_encode_json_round_trip() -> None:
    obj = {"choices": [{"delta": {"content": "line\nbreak\r and \u2028 é"}}], "n": 1}
    encoded = encode_json(obj)
    assert encoded == encode_event(orjson.dumps(obj))
    assert encoded.count(b"\n") == 2
    events, _ = parse_all(encoded)
    assert events[0].data is not None and orjson.loads(events[0].data) == obj
    named = encode_json({"type": "response.completed"}, event="response.completed")
    assert named == b'event: response.completed\ndata: {"type":"response.completed"}\n\n'
    assert fields(parse_all(named)[0]) == [
        (b'{"type":"response.completed"}', "response.completed", None, None)
    ]


# --- properties -----------------------------------------------------------------------------------

_line_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)


@st.composite
def generated_stream(draw: st.DrawFn) -> tuple[bytes, list[Fields]]:
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    parts: list[bytes] = []
    expected: list[Fields] = []
    if draw(st.booleans()):
        parts.append(b"\xef\xbb\xbf")
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 5)) == 0:  # a comment-only block
            parts.append(b":" + draw(_line_text).encode() + b"\n\n")
            expected.append((None, None, None, None))
            continue
        data = draw(st.text(st.characters(codec="utf-8"), max_size=30))
        event = draw(st.none() | _line_text)
        id_ = draw(st.none() | _line_text.filter(lambda s: "\x00" not in s))
        retry = draw(st.none() | st.integers(0, 10**12))
        block = encode_event(data, event=event, id=id_, retry=retry)
        if draw(st.booleans()):  # a comment inside the block
            block = b": " + draw(_line_text).encode() + b"\n" + block
        parts.append(block)
        normalized = data.replace("\r\n", "\n").replace("\r", "\n").encode()
        expected.append((normalized, event, id_, retry))
    stream = b"".join(parts).replace(b"\n", eol)
    return stream, expected


@settings(deadline=None, max_examples=200)
@given(generated_stream(), st.data())
def test_property_generated_events_survive_any_split(
    gen: tuple[bytes, list[Fields]], data: st.DataObject
) -> None:
    stream, expected = gen
    whole, whole_tail = parse_all(stream)
    assert fields(whole) == expected
    assert whole_tail == (b"" if expected else stream)  # stream is b"" or a lone BOM when there is no event
    assert lossless(whole, whole_tail) == stream
    if data.draw(st.booleans()):
        pieces = bytewise(stream)
    else:
        pieces = split_at(stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    events, tail = parse_pieces(pieces)
    assert fields(events) == expected
    assert lossless(events, tail) == stream
    assert tail == whole_tail  # not b"\n" for a final CRLF split after its CR


_SSE_TOKENS = [
    b"\r",
    b"\n",
    b"\r\n",
    b":",
    b" ",
    b"data",
    b"event",
    b"id",
    b"retry",
    b"\xef\xbb\xbf",
    b"\0",
    b"7",
]
_sse_ish = st.lists(st.sampled_from(_SSE_TOKENS) | st.binary(max_size=3)).map(b"".join)


@settings(deadline=None, max_examples=200)
@given(st.binary() | _sse_ish, st.data())
def test_property_arbitrary_bytes_never_raise_and_are_lossless(stream: bytes, data: st.DataObject) -> None:
    whole, whole_tail = parse_all(stream)
    assert lossless(whole, whole_tail) == stream
    assert fields(whole) == reference(stream)
    pieces = split_at(stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream) + 1)))
    events, tail = parse_pieces(pieces)
    assert lossless(events, tail) == stream
    assert fields(events) == fields(whole)
    assert tail == whole_tail


# --- linearity ------------------------------------------------------------------------------------


def test_huge_single_event_fed_one_byte_at_a_time_is_linear() -> None:
    stream = b"data: " + b"x" * 1_000_000 + b"\n\n"
    parser = SSEParser()
    events: list[SSEEvent] = []
    started = time.perf_counter()
    for i in range(len(stream)):
        events.extend(parser.feed(stream[i : i + 1]))
    elapsed = time.perf_counter() - started
    assert len(events) == 1 and events[0].raw == stream
    assert parser.close() == b""
    assert elapsed < 30  # quadratic behaviour would take hours


def test_huge_multi_line_event_fed_one_byte_at_a_time_is_linear() -> None:
    stream = b"data: " + b"\ndata: ".join([b"y" * 20] * 40_000) + b"\r\n\r\n"
    parser = SSEParser()
    events: list[SSEEvent] = []
    started = time.perf_counter()
    for i in range(len(stream)):
        events.extend(parser.feed(stream[i : i + 1]))
    elapsed = time.perf_counter() - started
    assert fields(events) == [(b"\n".join([b"y" * 20] * 40_000), None, None, None)]
    assert elapsed < 30


@pytest.mark.parametrize("step", [1, 7])
def test_many_events_in_small_chunks_is_linear(step: int) -> None:
    stream = b"".join(b"data: %d\n\n" % i for i in range(200_000))
    parser = SSEParser()
    count = 0
    last: SSEEvent | None = None
    started = time.perf_counter()
    for i in range(0, len(stream), step):
        events = parser.feed(stream[i : i + step])
        if events:
            count += len(events)
            last = events[-1]
    elapsed = time.perf_counter() - started
    assert count == 200_000
    assert last is not None and last.data == b"199999"
    assert parser.close() == b""
    assert elapsed < 30
