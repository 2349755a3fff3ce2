"""The fast response parser gives exactly what json.loads gives (pure)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncimg._json import loads_images_json

B64 = base64.b64encode(bytes(range(256)) * 40).decode()  # over the 4 KiB threshold


def body(obj: object, indent: int | None = None) -> bytes:
    return json.dumps(obj, indent=indent).encode()


@pytest.mark.parametrize("indent", [None, 2])
def test_big_b64_values_are_spliced_back(indent: int | None) -> None:
    obj = {
        "created": 1,
        "data": [{"b64_json": B64, "revised_prompt": "é"}, {"b64_json": B64[:-4]}],
        "usage": {"total_tokens": 3},
    }
    assert loads_images_json(body(obj, indent)) == obj


@pytest.mark.parametrize(
    "obj",
    [
        {"data": [{"b64_json": "short"}]},
        {"data": [{"b64_json": None}]},
        {"b64_json": B64, "data": []},                     # the key outside data[i]
        {"data": [{"b64_json": B64}], "extra": {"b64_json": B64}},
        {"data": [{"b64_json": "é" * 5000}]},              # not ASCII: escaped by json.dumps
        {"data": [{"b64_json": B64 + "\\n"}]},             # a backslash inside
        [1, 2, 3],
        "text",
    ],
)
def test_odd_bodies_fall_back_to_json_loads(obj: object) -> None:
    assert loads_images_json(body(obj)) == json.loads(body(obj))


def test_raw_utf8_in_a_big_value_falls_back() -> None:
    raw = b'{"data": [{"b64_json": "' + "é".encode() * 5000 + b'"}]}'
    assert loads_images_json(raw) == json.loads(raw)


@pytest.mark.parametrize("cut", [10, 100, 5000, -3])
def test_truncated_bodies_raise_value_error(cut: int) -> None:
    full = body({"created": 1, "data": [{"b64_json": B64}]})
    with pytest.raises(json.JSONDecodeError):
        loads_images_json(full[:cut])


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["b64_json", "data", "url", "x"]), children, max_size=4),
    max_leaves=20,
))
def test_same_as_json_loads_for_any_document(doc: object) -> None:
    wrapped = {"data": [{"b64_json": B64}, doc], "doc": doc}
    assert loads_images_json(body(wrapped)) == wrapped


@pytest.mark.parametrize(
    "obj",
    [
        {"created": 1, "data": [{"b64_json": B64}, {"b64_json": B64[:100]}]},
        {"created": 1, "data": [{"url": "http://x/y.png"}]},
    ],
)
def test_a_body_inside_a_bigger_reused_buffer(obj: object) -> None:
    raw = body(obj)
    buf = bytearray(raw) + b'"b64_json": "' + b"Z" * 5000 + b"garbage {["  # leftovers
    assert loads_images_json(buf, len(raw)) == obj


def test_a_truncated_body_in_a_buffer_is_still_an_error() -> None:
    raw = body({"created": 1, "data": [{"b64_json": B64}]})
    buf = bytearray(raw)
    with pytest.raises(json.JSONDecodeError):
        loads_images_json(buf, len(raw) - 5)


async def test_responses_are_decoded_in_one_reused_buffer(client: object, emu: object) -> None:
    from asyncimg import AsyncImagesClient

    assert isinstance(client, AsyncImagesClient)
    transport = client._transport
    await client.generate("a", model="dall-e-2", response_format="b64_json")
    buffer = transport._buffer
    assert len(buffer) > 1000
    await client.generate("b", model="dall-e-2", response_format="b64_json")
    assert transport._buffer is buffer  # the same size again: not reallocated


def test_a_body_over_the_kept_size_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    from asyncimg import _transport

    monkeypatch.setattr(_transport, "_KEPT_BUFFER", 100)
    transport = _transport.Transport(max_connections=1, max_response_bytes=10**6,
                                     user_agent="t")
    headers = CIMultiDictProxy(CIMultiDict())
    small, big = body({"created": 1}), body({"created": 1, "pad": "x" * 500})
    assert transport._decode([small], len(small), 200, headers) == {"created": 1}
    kept = transport._buffer
    assert transport._decode([big[:100], big[100:]], len(big), 200, headers)["pad"]
    assert transport._buffer is kept
