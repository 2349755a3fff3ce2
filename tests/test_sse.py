"""The pure layers of streaming: the SSE decoder, event parsing, stream errors (no loop)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncimg import (
    AuthenticationError,
    BadRequestError,
    CompletedImageEvent,
    ContentPolicyError,
    InternalServerError,
    PartialImageEvent,
    RateLimitError,
    UnknownEvent,
)
from asyncimg._stream import ServerSentEvent, SSEDecoder, parse_event, stream_error

WIRE = (
    b": a comment, ignored\n"
    b"event: image_generation.partial_image\n"
    b'data: {"type": "image_generation.partial_image",\n'
    b'data:  "partial_image_index": 0}\n'
    b"\n"
    b"id: 7\n"
    b"retry: 100\n"
    b"data\n"
    b"\n"
    b"event: image_generation.completed\n"
    b'data: {"type": "image_generation.completed"}'
)
EXPECTED = [
    ServerSentEvent(
        "image_generation.partial_image",
        '{"type": "image_generation.partial_image",\n "partial_image_index": 0}',
    ),
    ServerSentEvent("message", "", "7", 100),
    ServerSentEvent("image_generation.completed", '{"type": "image_generation.completed"}', "7"),
]


def decode(chunks: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = [e for chunk in chunks for e in decoder.feed(chunk)]
    return events + decoder.close()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_line_ends_comments_multiline_data_and_no_final_newline(newline: bytes) -> None:
    assert decode([WIRE.replace(b"\n", newline)]) == EXPECTED


@given(points=st.lists(st.integers(min_value=0), max_size=12),
       newline=st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_chunk_boundaries_anywhere(points: list[int], newline: bytes) -> None:
    wire = WIRE.replace(b"\n", newline)
    assert decode(cut(wire, points)) == EXPECTED


@given(st.lists(st.integers(min_value=0), max_size=6))
def test_a_crlf_cut_in_two_is_one_line_end(points: list[int]) -> None:
    wire = b"data: a\r\n\r\ndata: b\r\n\r\n"
    assert [e.data for e in decode(cut(wire, points))] == ["a", "b"]


def test_an_event_is_returned_as_soon_as_its_blank_line_arrives() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x") == []
    assert decoder.feed(b"yz\n") == []
    assert decoder.feed(b"\n") == [ServerSentEvent(data="xyz")]
    assert decoder.close() == []


def test_consumed_bytes_are_not_kept() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: " + b"A" * 100_000 + b"\n\n")
    assert len(decoder._buffer) == 0
    assert decoder._data == []


def test_an_event_with_no_data_is_not_dispatched() -> None:
    assert decode([b"event: ping\n\n: keep-alive\n\n"]) == []


PARTIAL = {
    "type": "image_edit.partial_image", "b64_json": "QUJD", "created_at": 1,
    "size": "1024x1024", "quality": "high", "background": "opaque", "output_format": "png",
    "partial_image_index": 2, "novel": [1],
}


def test_parse_partial_completed_and_unknown_events() -> None:
    partial = parse_event(ServerSentEvent(data=json.dumps(PARTIAL)), request_id="req_1")
    assert isinstance(partial, PartialImageEvent)
    assert (partial.type, partial.partial_image_index, partial.b64_json) == (
        "image_edit.partial_image", 2, "QUJD"
    )
    assert partial.extra == {"novel": [1]}
    assert partial.request_id == "req_1"
    assert "QUJD" not in repr(partial)

    done = {**PARTIAL, "type": "image_generation.completed", "usage": {"total_tokens": 9}}
    del done["partial_image_index"]
    completed = parse_event(ServerSentEvent(data=json.dumps(done)))
    assert isinstance(completed, CompletedImageEvent)
    assert completed.usage is not None
    assert completed.usage.total_tokens == 9

    other = parse_event(ServerSentEvent("x", json.dumps({"type": "image_generation.queued"})))
    assert other == UnknownEvent("image_generation.queued", {"type": "image_generation.queued"})
    assert parse_event(ServerSentEvent("odd", "not json")) == UnknownEvent("odd", "not json")
    wrong = parse_event(ServerSentEvent(data=json.dumps({**PARTIAL, "size": 5})))
    assert isinstance(wrong, PartialImageEvent)
    assert wrong.size is None


@pytest.mark.parametrize(
    ("sse", "cls", "status"),
    [
        (ServerSentEvent("error", json.dumps(
            {"error": {"message": "no", "type": "invalid_request_error", "param": "size"}}
        )), BadRequestError, 400),
        (ServerSentEvent(data=json.dumps(
            {"type": "error", "code": "moderation_blocked", "message": "blocked"}
        )), ContentPolicyError, 400),
        (ServerSentEvent(data=json.dumps(
            {"error": {"message": "slow down", "code": "rate_limit_exceeded"}}
        )), RateLimitError, 429),
        (ServerSentEvent("error", json.dumps({"error": {"message": "key", "status": 401}})),
         AuthenticationError, 401),
        (ServerSentEvent("error", "the server fell over"), InternalServerError, 500),
    ],
)
def test_an_error_event_is_the_matching_status_error(
    sse: ServerSentEvent, cls: type[Exception], status: int
) -> None:
    with pytest.raises(cls) as caught:
        parse_event(sse, request_id="req_9")
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    assert caught.value.request_id == "req_9"  # type: ignore[attr-defined]
    assert caught.value.message  # type: ignore[attr-defined]


def test_stream_error_keeps_the_fields() -> None:
    exc = stream_error({"error": {"message": "m", "type": "invalid_request_error",
                                  "param": "prompt", "code": "c"}})
    assert (exc.message, exc.type, exc.param, exc.code) == (
        "m", "invalid_request_error", "prompt", "c"
    )


_TEXT = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)))


@given(
    events=st.lists(
        st.tuples(st.from_regex(r"[a-z_.]{1,20}", fullmatch=True), st.lists(_TEXT, min_size=1)),
        max_size=5,
    ),
    points=st.lists(st.integers(min_value=0), max_size=10),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_any_events_survive_any_chunking(
    events: list[tuple[str, list[str]]], points: list[int], newline: str
) -> None:
    wire = "".join(
        f"event: {name}{newline}" + "".join(f"data: {line}{newline}" for line in lines) + newline
        for name, lines in events
    ).encode()
    got = decode(cut(wire, points))
    assert [(e.event, e.data) for e in got] == [(n, "\n".join(ls)) for n, ls in events]


def test_an_unknown_event_still_has_b64_json() -> None:
    event = parse_event(ServerSentEvent(data='{"type": "image.new", "b64_json": "QQ=="}'))
    assert isinstance(event, UnknownEvent)
    assert (event.type, event.b64_json) == ("image.new", "QQ==")


def test_pending_bytes_counts_the_event_being_received() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: " + b"A" * 500 + b"\ndata: " + b"B" * 100)
    assert decoder.pending_bytes == 500 + len(b"data: ") + 100
    decoder.feed(b"\n\n")
    assert decoder.pending_bytes == 0
