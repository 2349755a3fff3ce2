"""Responses parse into frozen attrs values, keeping what they do not know (pure)."""

from __future__ import annotations

import attrs
import pytest

from asyncimg import APIResponseValidationError, Image, ImagesResponse, Usage

FULL = {
    "created": 1713833628,
    "data": [
        {"b64_json": "aGVsbG8=", "revised_prompt": "a cat, revised", "seed": 7},
        {"url": "https://example.invalid/a.png"},
    ],
    "background": "transparent",
    "output_format": "png",
    "size": "1024x1024",
    "quality": "high",
    "usage": {
        "total_tokens": 100,
        "input_tokens": 50,
        "output_tokens": 50,
        "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
        "output_tokens_details": {"image_tokens": 45, "text_tokens": 5},
        "cost": 0.1,
    },
    "brand_new_field": {"x": 1},
}


def test_every_field_is_parsed() -> None:
    r = ImagesResponse.from_json(FULL, request_id="req_abc")
    assert r.created == 1713833628
    assert r.request_id == "req_abc"
    assert (r.background, r.output_format, r.size, r.quality) == (
        "transparent", "png", "1024x1024", "high",
    )
    assert r.data[0] == Image(b64_json="aGVsbG8=", revised_prompt="a cat, revised",
                              extra={"seed": 7})
    assert r.data[1].url == "https://example.invalid/a.png"
    assert r.data[1].b64_json is None
    usage = r.usage
    assert isinstance(usage, Usage)
    assert (usage.total_tokens, usage.input_tokens, usage.output_tokens) == (100, 50, 50)
    assert usage.input_tokens_details is not None
    assert usage.input_tokens_details.text_tokens == 10
    assert usage.input_tokens_details.image_tokens == 40
    assert usage.output_tokens_details is not None
    assert usage.output_tokens_details.image_tokens == 45
    assert usage.extra == {"cost": 0.1}
    assert r.extra == {"brand_new_field": {"x": 1}}


def test_values_are_frozen() -> None:
    r = ImagesResponse.from_json(FULL)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        r.created = 1  # type: ignore[misc]


def test_minimal_and_odd_responses_do_not_crash() -> None:
    r = ImagesResponse.from_json({"created": 1})
    assert r.data == ()
    assert r.usage is None
    odd = ImagesResponse.from_json(
        {"created": "yesterday", "data": [{"url": 5}, "junk", {}], "usage": "n/a", "size": 3}
    )
    assert odd.created is None
    assert odd.data == (Image(), Image())
    assert odd.usage is None
    assert odd.size is None


@pytest.mark.parametrize("body", [[], "text", None, {"data": {"url": "x"}}])
def test_not_an_images_response(body: object) -> None:
    with pytest.raises(APIResponseValidationError):
        ImagesResponse.from_json(body, request_id="req_1")


def test_b64_is_kept_out_of_repr() -> None:
    image = Image(b64_json="A" * 1000)
    assert "AAAA" not in repr(image)
