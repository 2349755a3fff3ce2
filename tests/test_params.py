"""Request parameters: build(), the JSON and multipart wire forms, from_wire() (pure)."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import attrs
import pytest

from asyncimg._exceptions import ValidationError
from asyncimg._files import ImageFile
from asyncimg._params import (
    EditParams,
    Form,
    GenerateParams,
    Params,
    VariationParams,
    from_wire,
)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int = 16, height: int = 16) -> bytes:
    """A valid RGBA PNG."""
    raw = b"".join(b"\x00" + bytes(width * 4) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


A = ImageFile.from_bytes(png(), "a.png")
B = ImageFile.from_bytes(png(), "b.png")
MASK = ImageFile.from_bytes(png(), "mask.png")


def _wire_files(form: Form) -> dict[str, tuple[ImageFile, ...]]:
    """Group a form's files by field name, as a server receives them."""
    files: dict[str, tuple[ImageFile, ...]] = {}
    for name, file in form.files:
        files[name] = (*files.get(name, ()), file)
    return files


# ------------------------------------------------------------------ classes


@pytest.mark.parametrize(
    ("cls", "endpoint", "path"),
    [
        (GenerateParams, "generate", "/images/generations"),
        (EditParams, "edit", "/images/edits"),
        (VariationParams, "variation", "/images/variations"),
    ],
)
def test_endpoint_and_path(cls: Any, endpoint: str, path: str) -> None:
    assert cls.endpoint == endpoint
    assert cls.path == path


def test_params_are_frozen() -> None:
    params = GenerateParams.build(prompt="cat")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        params.n = 3  # type: ignore[misc]


# ------------------------------------------------------------------ to_json


def test_to_json_omits_none() -> None:
    assert GenerateParams.build(prompt="cat").to_json() == {"prompt": "cat"}


def test_to_json_keeps_every_given_parameter() -> None:
    params = GenerateParams.build(
        prompt="cat",
        model="gpt-image-1",
        n=2,
        quality="high",
        output_format="webp",
        output_compression=80,
        size="1024x1024",
        moderation="low",
        background="opaque",
        user="u-1",
    )
    assert params.to_json() == {
        "prompt": "cat",
        "model": "gpt-image-1",
        "n": 2,
        "quality": "high",
        "output_format": "webp",
        "output_compression": 80,
        "size": "1024x1024",
        "moderation": "low",
        "background": "opaque",
        "user": "u-1",
    }


def test_to_json_merges_extra_body() -> None:
    params = GenerateParams.build(
        prompt="cat", n=1, extra_body={"steps": 30, "partial_images": 2, "seed": {"a": 1}}
    )
    assert params.to_json() == {
        "prompt": "cat",
        "n": 1,
        "steps": 30,
        "partial_images": 2,
        "seed": {"a": 1},
    }


def test_extra_body_none_is_no_extra_body() -> None:
    assert GenerateParams.build(prompt="cat", extra_body=None).extra_body == {}


def test_to_json_is_json() -> None:
    params = GenerateParams.build(prompt="ünïcode 🐈", n=3, extra_body={"x": [1, None]})
    assert json.loads(json.dumps(params.to_json())) == params.to_json()


# ------------------------------------------------------------------ to_form


def test_to_form_one_image_is_called_image() -> None:
    form = EditParams.build(image=(A,), prompt="flamingo").to_form()
    assert form.files == (("image", A),)
    assert form.fields == (("prompt", "flamingo"),)


def test_to_form_several_images_are_called_image_brackets() -> None:
    form = EditParams.build(image=(A, B), prompt="p", model="gpt-image-1").to_form()
    assert form.files == (("image[]", A), ("image[]", B))


def test_to_form_mask_comes_last_as_mask() -> None:
    form = EditParams.build(image=(A, B), mask=MASK, prompt="p", model="gpt-image-1").to_form()
    assert form.files == (("image[]", A), ("image[]", B), ("mask", MASK))


def test_to_form_numbers_are_strings_and_none_is_left_out() -> None:
    form = EditParams.build(
        image=(A,),
        prompt="p",
        model="gpt-image-1",
        n=2,
        output_format="jpeg",
        output_compression=75,
        input_fidelity="high",
    ).to_form()
    assert dict(form.fields) == {
        "prompt": "p",
        "model": "gpt-image-1",
        "n": "2",
        "output_format": "jpeg",
        "output_compression": "75",
        "input_fidelity": "high",
    }
    assert all(isinstance(value, str) for _, value in form.fields)


def test_to_form_extra_body_values_become_text() -> None:
    form = VariationParams.build(
        image=(A,), extra_body={"flag": True, "off": False, "ratio": 1.5, "obj": {"k": [1]}}
    ).to_form()
    assert dict(form.fields) == {
        "flag": "true",
        "off": "false",
        "ratio": "1.5",
        "obj": '{"k": [1]}',
    }


def test_variation_form() -> None:
    form = VariationParams.build(
        image=(A,), model="dall-e-2", n=3, size="256x256", response_format="b64_json", user="u"
    ).to_form()
    assert form.files == (("image", A),)
    assert dict(form.fields) == {
        "model": "dall-e-2",
        "n": "3",
        "size": "256x256",
        "response_format": "b64_json",
        "user": "u",
    }


# ------------------------------------------------------------------ images


@pytest.mark.parametrize(
    ("make", "images"),
    [
        (lambda: GenerateParams.build(prompt="c"), 1),
        (lambda: GenerateParams.build(prompt="c", n=4), 4),
        (lambda: EditParams.build(image=(A,), prompt="c", n=7), 7),
        (lambda: VariationParams.build(image=(A,), n=10), 10),
        (lambda: GenerateParams.build(prompt="c", extra_body={"n": 5}), 5),
        (lambda: GenerateParams.build(prompt="c", extra_body={"n": True}), 1),
        (lambda: GenerateParams.build(prompt="c", extra_body={"n": "5"}), 1),
        (lambda: GenerateParams.build(prompt="c", extra_body={"n": 0}), 1),
    ],
)
def test_images_counts_what_the_call_asks_for(make: Any, images: int) -> None:
    assert make().images == images


# ------------------------------------------------------------------ type errors


@pytest.mark.parametrize(
    ("cls", "kwargs", "param", "fragment"),
    [
        (GenerateParams, {"prompt": 3}, "prompt", "prompt must be str, not int"),
        (GenerateParams, {"prompt": "c", "n": "2"}, "n", "n must be int, not str"),
        (GenerateParams, {"prompt": "c", "n": True}, "n", "n must be int"),
        (GenerateParams, {"prompt": "c", "n": 2.0}, "n", "n must be int"),
        (GenerateParams, {"prompt": "c", "n": 0}, "n", "n must be >= 1"),
        (GenerateParams, {"prompt": "c", "model": 2}, "model", "model must be str"),
        (GenerateParams, {"prompt": "c", "size": (1, 1)}, "size", "size must be str"),
        (
            GenerateParams,
            {"prompt": "c", "output_compression": 101},
            "output_compression",
            "output_compression must be <= 100",
        ),
        (
            GenerateParams,
            {"prompt": "c", "output_compression": "9"},
            "output_compression",
            "must be int",
        ),
        (GenerateParams, {"prompt": "c", "extra_body": [1]}, "extra_body", "extra_body"),
        (GenerateParams, {"prompt": "c", "quality": 1}, "quality", "quality must be str"),
        (GenerateParams, {}, "prompt", "prompt is required"),
        (GenerateParams, {"prompt": "c", "seed": 3}, "seed", "extra_body"),
        (EditParams, {"prompt": "c"}, "image", "image is required"),
        (EditParams, {"image": [A], "prompt": "c"}, "image", "image must be tuple"),
        (EditParams, {"image": (A, b"x"), "prompt": "c"}, "image", "image must be ImageFile"),
        (EditParams, {"image": (A,), "prompt": "c", "mask": b"x"}, "mask", "mask"),
        (EditParams, {"image": (A,), "prompt": "c", "style": "vivid"}, "style", "extra_body"),
        (VariationParams, {"image": (A,), "prompt": "c"}, "prompt", "extra_body"),
        (VariationParams, {"image": (A,), "n": -1}, "n", "n must be >= 1"),
    ],
)
def test_type_errors_name_the_parameter(
    cls: Any, kwargs: dict[str, Any], param: str, fragment: str
) -> None:
    with pytest.raises(ValidationError) as info:
        cls.build(**kwargs)
    assert info.value.param == param
    assert fragment in str(info.value)


def test_build_applies_the_model_rules() -> None:
    with pytest.raises(ValidationError, match="for dall-e-2") as info:
        GenerateParams.build(prompt="c", model="dall-e-2", size="300x300")
    assert info.value.param == "size"


# ------------------------------------------------------------------ from_wire


GENERATE_CASES: list[dict[str, Any]] = [
    {"prompt": "cat"},
    {"prompt": "cat", "model": "dall-e-3", "n": 1, "quality": "hd", "style": "natural"},
    {"prompt": "cat", "model": "dall-e-2", "size": "256x256", "response_format": "url"},
    {
        "prompt": "cat",
        "model": "gpt-image-1",
        "background": "transparent",
        "output_format": "webp",
        "output_compression": 40,
        "moderation": "low",
        "user": "u",
    },
    {"prompt": "cat", "model": "my-sd-xl", "extra_body": {"steps": 30, "cfg": 7.5}},
]


@pytest.mark.parametrize("kwargs", GENERATE_CASES)
def test_to_json_then_from_wire_round_trips(kwargs: dict[str, Any]) -> None:
    params = GenerateParams.build(**kwargs)
    assert from_wire("generate", params.to_json()) == params


def _form_round_trip(params: Params) -> Params:
    assert not isinstance(params, GenerateParams)
    form = params.to_form()
    return from_wire(params.endpoint, dict(form.fields), _wire_files(form))


EDIT_CASES: list[dict[str, Any]] = [
    {"image": (A,), "prompt": "p"},
    {"image": (A,), "prompt": "p", "model": "dall-e-2", "mask": MASK, "n": 3, "size": "512x512"},
    {"image": (A, B), "prompt": "p", "model": "gpt-image-1.5", "mask": MASK},
    {
        "image": (A, B, A),
        "prompt": "p",
        "model": "gpt-image-1",
        "n": 2,
        "quality": "high",
        "output_format": "jpeg",
        "output_compression": 0,
        "background": "opaque",
        "input_fidelity": "low",
        "user": "u",
    },
    {"image": (A,), "prompt": "p", "extra_body": {"steps": "30"}},
]


@pytest.mark.parametrize("kwargs", EDIT_CASES)
def test_edit_to_form_then_from_wire_round_trips(kwargs: dict[str, Any]) -> None:
    params = EditParams.build(**kwargs)
    assert _form_round_trip(params) == params


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image": (A,)},
        {"image": (A,), "model": "dall-e-2", "n": 10, "size": "1024x1024", "user": "u"},
        {"image": (A,), "response_format": "b64_json", "extra_body": {"seed": "1"}},
    ],
)
def test_variation_to_form_then_from_wire_round_trips(kwargs: dict[str, Any]) -> None:
    params = VariationParams.build(**kwargs)
    assert _form_round_trip(params) == params


def test_from_wire_puts_unknown_names_in_extra_body() -> None:
    params = from_wire("generate", {"prompt": "c", "steps": False, "seed": 1})
    assert params.extra_body == {"steps": False, "seed": 1}


@pytest.mark.parametrize(
    ("endpoint", "fields", "files", "param"),
    [
        ("generate", {}, None, "prompt"),
        ("generate", {"prompt": "c", "n": "2"}, None, "n"),
        ("generate", {"prompt": "c", "model": "dall-e-2", "size": "9x9"}, None, "size"),
        ("edit", {}, {"image": (A,)}, "prompt"),
        ("edit", {"prompt": "c"}, {}, "image"),
        ("edit", {"prompt": "c"}, None, "image"),
        ("edit", {"prompt": "c", "n": "two"}, {"image": (A,)}, "n"),
        ("edit", {"prompt": "c", "output_compression": "x"}, {"image": (A,)}, "output_compression"),
        ("variation", {}, {"image": (A,), "mask": (MASK,)}, "mask"),
        ("variation", {"model": "dall-e-3"}, {"image": (A,)}, "model"),
    ],
)
def test_from_wire_refuses_as_the_client_would(
    endpoint: Any,
    fields: dict[str, Any],
    files: Mapping[str, tuple[ImageFile, ...]] | None,
    param: str,
) -> None:
    with pytest.raises(ValidationError) as info:
        from_wire(endpoint, fields, files)
    assert info.value.param == param


def test_from_wire_reads_form_numbers() -> None:
    params = from_wire("variation", {"n": "4"}, {"image": (A,)})
    assert isinstance(params, VariationParams)
    assert params.n == 4


def test_from_wire_takes_image_and_image_brackets_together() -> None:
    params = from_wire("edit", {"prompt": "p"}, {"image": (A,), "image[]": (B,)})
    assert isinstance(params, EditParams)
    assert params.image == (A, B)
