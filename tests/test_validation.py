"""The per-model rule table and validate(): every rule, refused and accepted (pure, no I/O)."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import attrs
import pytest

from asyncimg._exceptions import ValidationError
from asyncimg._files import ImageFile
from asyncimg._params import EditParams, GenerateParams, VariationParams
from asyncimg._validation import (
    MAX_INPUT_IMAGES,
    MODEL_RULES,
    ModelRules,
    SizeRule,
    rules_for,
    validate,
)

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _header_rules_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Here the rules that read headers are tested, with header-only JPEG and WebP images.

    With Pillow installed the decode check would refuse those first; it has its own
    tests (tests/test_decode.py).
    """
    monkeypatch.setattr("asyncimg._validation.decode_problem", lambda _data: None)

# ------------------------------------------------------------------ test images


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(
    width: int = 8,
    height: int = 8,
    *,
    alpha: bool = True,
    trns: bool = False,
    size: int = 0,
) -> bytes:
    """A valid PNG (RGBA when ``alpha``, else RGB); ``size`` pads it to that many bytes."""
    colour_type = 6 if alpha else 2
    channels = 4 if alpha else 3
    raw = b"".join(b"\x00" + bytes(width * channels) for _ in range(height))
    head = b"\x89PNG\r\n\x1a\n" + _chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    )
    if trns:
        head += _chunk(b"tRNS", b"\x00\x00\x00\x00\x00\x00")
    body = _chunk(b"IDAT", zlib.compress(raw))
    tail = _chunk(b"IEND", b"")
    if size:
        pad = size - len(head) - len(body) - len(tail) - 12
        assert pad >= 0
        body += _chunk(b"tEXt", b"c\x00" + b"x" * (pad - 2))
    data = head + body + tail
    assert not size or len(data) == size
    return data


def jpeg(width: int = 8, height: int = 8) -> bytes:
    """The headers of a baseline JPEG: enough for sniffing and for its size."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + bytes(9)
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def webp(width: int = 8, height: int = 8) -> bytes:
    """A lossless (VP8L) WebP header."""
    bits = (width - 1) | ((height - 1) << 14) | (1 << 28)
    body = b"\x2f" + bits.to_bytes(4, "little") + bytes(8)
    return (
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(body))
        + b"WEBP"
        + b"VP8L"
        + (struct.pack("<I", len(body)) + body)
    )


def f(data: bytes, name: str | None = None) -> ImageFile:
    return ImageFile.from_bytes(data, name)


RGBA = f(png(64, 64), "rgba.png")
RGB = f(png(64, 64, alpha=False), "rgb.png")


def gen(**kw: Any) -> GenerateParams:
    kw.setdefault("prompt", "a white siamese cat")
    return GenerateParams.build(**kw)


def edit(*images: ImageFile, **kw: Any) -> EditParams:
    kw.setdefault("prompt", "add a flamingo")
    return EditParams.build(image=images or (RGBA,), **kw)


def var(*images: ImageFile, **kw: Any) -> VariationParams:
    return VariationParams.build(image=images or (RGBA,), **kw)


def refused(param: str, *fragments: str) -> Any:
    """A context manager: a ValidationError naming ``param``, its message holding ``fragments``."""
    return _Refused(param, fragments)


class _Refused:
    def __init__(self, param: str, fragments: tuple[str, ...]) -> None:
        self.param = param
        self.fragments = fragments
        self._raises = pytest.raises(ValidationError)

    def __enter__(self) -> None:
        self._info = self._raises.__enter__()

    def __exit__(self, *exc: Any) -> bool:
        handled = self._raises.__exit__(*exc)
        error = self._info.value
        assert error.param == self.param, str(error)
        for fragment in self.fragments:
            assert fragment in str(error), f"{fragment!r} not in {str(error)!r}"
        return bool(handled)


ALL_MODELS = [
    "dall-e-2",
    "dall-e-3",
    "gpt-image-1",
    "gpt-image-1-mini",
    "gpt-image-1.5",
    "gpt-image-2",
    "gpt-image-2-2026-04-21",
    "gpt-image-2.5-sunburst",
    "gpt-image-2.5-flare",
    "gpt-image-2.6-sunburst",
    "gpt-image-2.6-flare",
    "chatgpt-image-latest",
]
GPT = [m for m in ALL_MODELS if not m.startswith("dall-e")]
GPT_2_5 = ["gpt-image-2.5-sunburst", "gpt-image-2.5-flare"]
GPT_FREE_SIZES = ["gpt-image-2", "gpt-image-2-2026-04-21", *GPT_2_5]
GPT_FIXED_SIZES = [m for m in GPT if m not in GPT_FREE_SIZES]
EDIT_MODELS = ["dall-e-2", *GPT]
UNKNOWN = [None, "my-sd-xl", "gpt-image-9", "DALL-E-2"]


# ------------------------------------------------------------------ the table


def test_the_table_names_every_model_of_the_spec() -> None:
    assert sorted(MODEL_RULES) == sorted(ALL_MODELS)
    for name, rules in MODEL_RULES.items():
        assert isinstance(rules, ModelRules)
        assert rules.name == name


def test_the_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        MODEL_RULES["my-model"] = MODEL_RULES["dall-e-2"]  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        MODEL_RULES["dall-e-2"].prompt_max = 5  # type: ignore[misc]


@pytest.mark.parametrize("model", ALL_MODELS)
def test_rules_for_a_known_model(model: str) -> None:
    assert rules_for(model) is MODEL_RULES[model]


@pytest.mark.parametrize("model", UNKNOWN)
def test_rules_for_an_unknown_model_is_none(model: str | None) -> None:
    assert rules_for(model) is None


def test_the_table_shape() -> None:
    d2, d3 = MODEL_RULES["dall-e-2"], MODEL_RULES["dall-e-3"]
    assert d2.endpoints == {"generate", "edit", "variation"}
    assert d3.endpoints == {"generate"}
    assert d2.max_image_bytes == 4 * MIB
    assert d2.square_inputs
    assert d2.alpha_without_mask
    for name in GPT:
        rules = MODEL_RULES[name]
        assert rules.endpoints == {"generate", "edit"}
        assert rules.response_formats is None
        assert rules.max_input_images == MAX_INPUT_IMAGES == 16
        assert rules.max_image_bytes == 50 * MIB
        assert (rules.free_sizes is not None) == (name in GPT_FREE_SIZES)
    assert MODEL_RULES["gpt-image-1-mini"].input_fidelities is None


# ------------------------------------------------------------------ universal checks


@pytest.mark.parametrize("model", [*UNKNOWN, *ALL_MODELS])
@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_an_empty_prompt_is_refused_for_every_model(model: str | None, prompt: str) -> None:
    with refused("prompt", "prompt is empty"):
        gen(model=model, prompt=prompt)


@pytest.mark.parametrize("model", [*EDIT_MODELS, *UNKNOWN])
def test_an_empty_edit_prompt_is_refused(model: str | None) -> None:
    with refused("prompt", "prompt is empty"):
        edit(model=model, prompt=" ")


@pytest.mark.parametrize("model", UNKNOWN)
@pytest.mark.parametrize("value", ["png", "URL", "b64", ""])
def test_response_format_must_be_url_or_b64_json_for_every_model(
    model: str | None, value: str
) -> None:
    with refused("response_format", repr(value), "url, b64_json"):
        gen(model=model, response_format=value)


@pytest.mark.parametrize("model", UNKNOWN)
@pytest.mark.parametrize("value", ["url", "b64_json"])
def test_response_format_url_and_b64_json_pass_for_unknown_models(
    model: str | None, value: str
) -> None:
    gen(model=model, response_format=value)


@pytest.mark.parametrize("model", [*UNKNOWN, *ALL_MODELS])
@pytest.mark.parametrize(
    "size",
    [
        "big",
        "1024",
        "1024x",
        "x1024",
        "0x1024",
        "1024x0",
        "-1x5",
        "1024X1024",
        " 1024x1024",
        "1024x1024 ",
        "10.5x10",
        "1e3x1e3",
        "",
    ],
)
def test_size_must_be_auto_or_width_x_height(model: str | None, size: str) -> None:
    with refused("size", repr(size)):
        gen(model=model, size=size)


@pytest.mark.parametrize("model", UNKNOWN)
@pytest.mark.parametrize("size", ["auto", "1x1", "4096x4096", "1000x7", "1792x1024"])
def test_any_width_x_height_passes_for_unknown_models(model: str | None, size: str) -> None:
    gen(model=model, size=size)


@pytest.mark.parametrize("value", [-1, 101, 1000])
def test_output_compression_outside_0_to_100_is_refused(value: int) -> None:
    with refused("output_compression", "output_compression"):
        gen(output_compression=value)


def test_output_compression_range_is_checked_by_validate_itself() -> None:
    params = gen(model="my-sd-xl")
    object.__setattr__(params, "output_compression", 150)
    with refused("output_compression", "150", "0..100"):
        validate(params)


@pytest.mark.parametrize("model", [*UNKNOWN, *ALL_MODELS])
def test_n_below_1_is_refused_for_every_model(model: str | None) -> None:
    with refused("n"):
        gen(model=model, n=0)


@pytest.mark.parametrize("model", ["", "  "])
def test_an_empty_model_name_is_refused(model: str) -> None:
    with refused("model", "model is empty"):
        gen(model=model)


@pytest.mark.parametrize("model", UNKNOWN)
def test_at_most_16_input_images_for_every_model(model: str | None) -> None:
    edit(*([RGBA] * 16), model=model)
    with refused("image", "17 images", "at most 16"):
        edit(*([RGBA] * 17), model=model)


@pytest.mark.parametrize("model", [*UNKNOWN, *EDIT_MODELS])
@pytest.mark.parametrize("data", [b"GIF89a\x01\x00\x01\x00", b"hello", b"<html>"])
def test_an_unrecognised_image_is_refused_for_every_model(model: str | None, data: bytes) -> None:
    with refused("image", "'thing.bin'", "not a PNG, JPEG or WebP"):
        edit(f(data, "thing.bin"), model=model)


@pytest.mark.parametrize("model", UNKNOWN)
def test_the_second_of_several_images_is_named_image_1(model: str | None) -> None:
    with refused("image[1]", "image[1]", "not a PNG, JPEG or WebP"):
        edit(RGBA, f(b"nope", "b.txt"), RGBA, model=model)


@pytest.mark.parametrize("model", UNKNOWN)
def test_an_empty_image_is_refused(model: str | None) -> None:
    with refused("image", "empty"):
        var(f(b"", "empty.png"), model=model)


@pytest.mark.parametrize("model", [*UNKNOWN, *EDIT_MODELS])
def test_an_unrecognised_mask_is_refused(model: str | None) -> None:
    with refused("mask", "mask", "not a PNG, JPEG or WebP"):
        edit(RGBA, mask=f(b"not an image", "mask.txt"), model=model)


@pytest.mark.parametrize("model", [*UNKNOWN, "dall-e-2"])
def test_a_variation_takes_exactly_one_image(model: str | None) -> None:
    with refused("image", "exactly one image"):
        var(RGBA, RGBA, model=model)


def test_no_image_is_refused() -> None:
    params = var(model="my-sd-xl")
    object.__setattr__(params, "image", ())
    with refused("image", "image is required"):
        validate(params)


@pytest.mark.parametrize(
    ("make", "param", "extra"),
    [
        (lambda e: gen(size="1024x1024", extra_body=e), "size", {"size": "256x256"}),
        (lambda e: gen(extra_body=e), "prompt", {"prompt": "another"}),
        (lambda e: gen(n=2, extra_body=e), "n", {"n": 3}),
        (lambda e: gen(model="my-sd-xl", extra_body=e), "model", {"model": "other"}),
        (lambda e: edit(extra_body=e), "image", {"image": "x"}),
        (lambda e: edit(mask=RGBA, extra_body=e), "mask", {"mask": "x"}),
        (lambda e: var(user="u", extra_body=e), "user", {"user": "v"}),
    ],
)
def test_extra_body_may_not_repeat_a_named_parameter(
    make: Any, param: str, extra: dict[str, Any]
) -> None:
    with refused(param, "extra_body repeats", repr(param)):
        make(extra)


@pytest.mark.parametrize("model", ["dall-e-2", "dall-e-3", "gpt-image-1", None, "my-sd-xl"])
def test_values_in_extra_body_are_not_checked(model: str | None) -> None:
    extra = {
        "size": "300x300",
        "n": 99,
        "quality": "ultra",
        "style": "x",
        "background": "nope",
        "moderation": "x",
        "response_format": "gif",
        "partial_images": 9,
    }
    params = gen(model=model, extra_body=extra)
    assert params.to_json()["size"] == "300x300"


def test_extra_body_may_give_a_parameter_left_as_none() -> None:
    params = gen(size="300x300", extra_body={"model": "dall-e-2"})
    assert params.to_json()["model"] == "dall-e-2"  # not checked: model was None


# ------------------------------------------------------------------ unknown models


@pytest.mark.parametrize("model", UNKNOWN)
def test_unknown_models_pass_every_model_specific_check_on_generate(model: str | None) -> None:
    gen(
        model=model,
        prompt="x" * 40_000,
        n=50,
        size="4000x7",
        quality="ultra",
        style="moody",
        background="sparkly",
        output_format="tiff",
        output_compression=10,
        moderation="none",
        response_format="url",
    )


@pytest.mark.parametrize("model", UNKNOWN)
def test_unknown_models_pass_every_model_specific_check_on_edit(model: str | None) -> None:
    big_rgb = f(png(30, 20, alpha=False, size=5 * MIB), "big.png")
    edit(
        big_rgb,
        f(jpeg(99, 10), "a.jpg"),
        f(webp(7, 700), "b.webp"),
        mask=f(jpeg(5, 5), "m.jpg"),
        model=model,
        prompt="y" * 40_000,
        n=20,
        size="300x300",
        quality="hd",
        input_fidelity="extreme",
        background="transparent",
        output_format="jpeg",
        response_format="b64_json",
    )


@pytest.mark.parametrize("model", UNKNOWN)
def test_unknown_models_pass_every_model_specific_check_on_variation(model: str | None) -> None:
    var(f(jpeg(30, 20), "a.jpg"), model=model, n=30, size="333x777")


# ------------------------------------------------------------------ dall-e-2


def test_dall_e_2_prompt_length() -> None:
    gen(model="dall-e-2", prompt="x" * 1000)
    with refused("prompt", "prompt is 1001 characters; dall-e-2 allows at most 1000"):
        gen(model="dall-e-2", prompt="x" * 1001)
    with refused("prompt", "prompt is 1001 characters; dall-e-2 allows at most 1000"):
        edit(model="dall-e-2", prompt="x" * 1001)


@pytest.mark.parametrize("make", [gen, edit, var])
@pytest.mark.parametrize("n", [1, 5, 10])
def test_dall_e_2_n_from_1_to_10(make: Any, n: int) -> None:
    make(model="dall-e-2", n=n)


@pytest.mark.parametrize("make", [gen, edit, var])
@pytest.mark.parametrize("n", [11, 100])
def test_dall_e_2_n_above_10_is_refused(make: Any, n: int) -> None:
    with refused("n", f"n={n}", "dall-e-2 allows n from 1 to 10"):
        make(model="dall-e-2", n=n)


@pytest.mark.parametrize("make", [gen, edit, var])
@pytest.mark.parametrize("size", ["256x256", "512x512", "1024x1024"])
def test_dall_e_2_sizes(make: Any, size: str) -> None:
    make(model="dall-e-2", size=size)


@pytest.mark.parametrize("make", [gen, edit, var])
@pytest.mark.parametrize("size", ["300x300", "auto", "1792x1024", "1536x1024", "2048x2048"])
def test_dall_e_2_other_sizes_are_refused(make: Any, size: str) -> None:
    with refused("size", f"size {size!r} is not one of 256x256, 512x512, 1024x1024 for dall-e-2"):
        make(model="dall-e-2", size=size)


def test_dall_e_2_size_message_is_exact() -> None:
    with pytest.raises(ValidationError) as info:
        gen(model="dall-e-2", size="300x300")
    assert (
        str(info.value) == "size '300x300' is not one of 256x256, 512x512, 1024x1024 for dall-e-2"
    )
    assert info.value.param == "size"


@pytest.mark.parametrize("make", [gen, edit, var])
@pytest.mark.parametrize("value", ["url", "b64_json"])
def test_dall_e_2_response_formats(make: Any, value: str) -> None:
    make(model="dall-e-2", response_format=value)


@pytest.mark.parametrize("make", [gen, edit])
@pytest.mark.parametrize("value", ["standard", "auto"])
def test_dall_e_2_quality_standard_or_auto(make: Any, value: str) -> None:
    make(model="dall-e-2", quality=value)


@pytest.mark.parametrize("make", [gen, edit])
@pytest.mark.parametrize("value", ["hd", "high", "low", "medium"])
def test_dall_e_2_other_qualities_are_refused(make: Any, value: str) -> None:
    with refused("quality", repr(value), "standard, auto", "dall-e-2"):
        make(model="dall-e-2", quality=value)


@pytest.mark.parametrize("model", ["dall-e-2", "dall-e-3"])
@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("background", "transparent"),
        ("background", "auto"),
        ("output_format", "png"),
        ("output_compression", 50),
        ("moderation", "low"),
    ],
)
def test_gpt_only_parameters_are_refused_for_dall_e(model: str, param: str, value: Any) -> None:
    with refused(param, param, repr(value), f"not supported by {model}"):
        gen(model=model, **{param: value})


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("background", "opaque"),
        ("output_format", "webp"),
        ("output_compression", 0),
        ("input_fidelity", "high"),
    ],
)
def test_gpt_only_parameters_are_refused_for_dall_e_2_edits(param: str, value: Any) -> None:
    with refused(param, param, "not supported by dall-e-2"):
        edit(model="dall-e-2", **{param: value})


@pytest.mark.parametrize("value", ["vivid", "natural"])
def test_style_is_refused_for_dall_e_2(value: str) -> None:
    with refused("style", "style", "not supported by dall-e-2"):
        gen(model="dall-e-2", style=value)


def test_dall_e_2_edit_takes_one_image() -> None:
    edit(RGBA, model="dall-e-2")
    with refused("image", "2 images given; dall-e-2 takes one image"):
        edit(RGBA, RGBA, model="dall-e-2")


@pytest.mark.parametrize("make", [edit, var])
@pytest.mark.parametrize(("data", "kind"), [(jpeg(64, 64), "JPEG"), (webp(64, 64), "WEBP")])
def test_dall_e_2_images_must_be_png(make: Any, data: bytes, kind: str) -> None:
    with refused("image", f"is a {kind}", "dall-e-2 needs PNG"):
        make(f(data, "x"), model="dall-e-2")


@pytest.mark.parametrize("make", [edit, var])
def test_dall_e_2_png_with_an_unreadable_header_is_refused(make: Any) -> None:
    broken = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    with refused("image", "not a valid PNG"):
        make(f(broken, "broken.png"), model="dall-e-2")


@pytest.mark.parametrize("make", [edit, var])
def test_dall_e_2_images_must_be_under_4_mb(make: Any) -> None:
    make(f(png(64, 64, size=4 * MIB - 1)), model="dall-e-2")
    with refused("image", f"{4 * MIB} bytes", "less than 4 MB"):
        make(f(png(64, 64, size=4 * MIB)), model="dall-e-2")


@pytest.mark.parametrize("make", [edit, var])
@pytest.mark.parametrize(("w", "h"), [(64, 32), (32, 64), (1024, 1023)])
def test_dall_e_2_images_must_be_square(make: Any, w: int, h: int) -> None:
    with refused("image", f"{w}x{h}", "square"):
        make(f(png(w, h), "wide.png"), model="dall-e-2")


def test_dall_e_2_edit_without_mask_needs_alpha() -> None:
    with refused("image", "'rgb.png' has no transparency", "alpha channel or a mask"):
        edit(RGB, model="dall-e-2")


@pytest.mark.parametrize(
    "image",
    [
        RGBA,
        f(png(64, 64, alpha=False, trns=True), "trns.png"),
    ],
)
def test_dall_e_2_edit_without_mask_with_alpha_passes(image: ImageFile) -> None:
    edit(image, model="dall-e-2")


def test_dall_e_2_edit_with_a_grey_alpha_png_passes() -> None:
    raw = b"".join(b"\x00" + bytes(8 * 2) for _ in range(8))
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 4, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )
    edit(f(data), model="dall-e-2")


def test_dall_e_2_edit_with_a_mask_needs_no_alpha_in_the_image() -> None:
    edit(RGB, mask=f(png(64, 64), "mask.png"), model="dall-e-2")


def test_dall_e_2_variation_needs_no_alpha() -> None:
    var(RGB, model="dall-e-2")


@pytest.mark.parametrize("model", EDIT_MODELS)
@pytest.mark.parametrize(("data", "kind"), [(jpeg(64, 64), "JPEG"), (webp(64, 64), "WEBP")])
def test_the_mask_must_be_png(model: str, data: bytes, kind: str) -> None:
    with refused("mask", f"is a {kind}", "needs PNG"):
        edit(RGBA, mask=f(data, "mask"), model=model)


@pytest.mark.parametrize("model", EDIT_MODELS)
def test_the_mask_must_be_under_4_mb(model: str) -> None:
    edit(RGBA, mask=f(png(64, 64, size=4 * MIB - 1)), model=model)
    with refused("mask", "less than 4 MB"):
        edit(RGBA, mask=f(png(64, 64, size=4 * MIB)), model=model)


@pytest.mark.parametrize("model", EDIT_MODELS)
@pytest.mark.parametrize(("w", "h"), [(32, 32), (64, 32), (128, 128)])
def test_the_mask_must_have_the_size_of_the_image(model: str, w: int, h: int) -> None:
    with refused("mask", f"is {w}x{h}", "64x64"):
        edit(RGBA, mask=f(png(w, h), "mask.png"), model=model)


@pytest.mark.parametrize("model", EDIT_MODELS)
def test_the_mask_with_an_unreadable_header_is_refused(model: str) -> None:
    with refused("mask", "not a valid PNG"):
        edit(RGBA, mask=f(b"\x89PNG\r\n\x1a\n" + bytes(40), "mask.png"), model=model)


@pytest.mark.parametrize("model", GPT)
def test_the_mask_is_compared_with_the_first_image(model: str) -> None:
    first, second = f(png(64, 64), "a.png"), f(png(32, 32), "b.png")
    edit(first, second, mask=f(png(64, 64)), model=model)
    with refused("mask", "32x32", "64x64"):
        edit(first, second, mask=f(png(32, 32)), model=model)


# ------------------------------------------------------------------ dall-e-3


@pytest.mark.parametrize(("make", "name"), [(edit, "edits"), (var, "variations")])
def test_dall_e_3_only_generates(make: Any, name: str) -> None:
    with refused("model", f"'dall-e-3' does not support {name}", "generations"):
        make(model="dall-e-3")


def test_dall_e_3_n_is_1() -> None:
    gen(model="dall-e-3", n=1)
    with refused("n", "n=2", "dall-e-3 allows only n=1"):
        gen(model="dall-e-3", n=2)


@pytest.mark.parametrize("size", ["1024x1024", "1792x1024", "1024x1792"])
def test_dall_e_3_sizes(size: str) -> None:
    gen(model="dall-e-3", size=size)


@pytest.mark.parametrize("size", ["256x256", "512x512", "auto", "1536x1024", "1024x1536"])
def test_dall_e_3_other_sizes_are_refused(size: str) -> None:
    with refused("size", "is not one of 1024x1024, 1792x1024, 1024x1792 for dall-e-3"):
        gen(model="dall-e-3", size=size)


@pytest.mark.parametrize("value", ["standard", "hd", "auto"])
def test_dall_e_3_qualities(value: str) -> None:
    gen(model="dall-e-3", quality=value)


@pytest.mark.parametrize("value", ["low", "medium", "high", "ultra"])
def test_dall_e_3_other_qualities_are_refused(value: str) -> None:
    with refused("quality", repr(value), "standard, hd, auto"):
        gen(model="dall-e-3", quality=value)


@pytest.mark.parametrize("value", ["vivid", "natural"])
def test_dall_e_3_styles(value: str) -> None:
    gen(model="dall-e-3", style=value)


@pytest.mark.parametrize("value", ["bold", "Vivid", ""])
def test_dall_e_3_other_styles_are_refused(value: str) -> None:
    with refused("style", "vivid, natural"):
        gen(model="dall-e-3", style=value)


def test_dall_e_3_prompt_length() -> None:
    gen(model="dall-e-3", prompt="x" * 4000)
    with refused("prompt", "prompt is 4001 characters; dall-e-3 allows at most 4000"):
        gen(model="dall-e-3", prompt="x" * 4001)


@pytest.mark.parametrize("value", ["url", "b64_json"])
def test_dall_e_3_response_formats(value: str) -> None:
    gen(model="dall-e-3", response_format=value)


# ------------------------------------------------------------------ GPT image models


@pytest.mark.parametrize("model", GPT)
def test_gpt_prompt_length(model: str) -> None:
    gen(model=model, prompt="x" * 32000)
    edit(model=model, prompt="x" * 32000)
    with refused("prompt", f"prompt is 32001 characters; {model} allows at most 32000"):
        gen(model=model, prompt="x" * 32001)
    with refused("prompt", "32001"):
        edit(model=model, prompt="x" * 32001)


@pytest.mark.parametrize("model", GPT)
@pytest.mark.parametrize("make", [gen, edit])
def test_gpt_n(model: str, make: Any) -> None:
    make(model=model, n=10)
    with refused("n", "n=11", "from 1 to 10"):
        make(model=model, n=11)


@pytest.mark.parametrize("model", GPT)
def test_gpt_models_have_no_variations(model: str) -> None:
    with refused("model", "does not support variations"):
        var(model=model)


@pytest.mark.parametrize("model", GPT)
@pytest.mark.parametrize("make", [gen, edit])
@pytest.mark.parametrize("size", ["1024x1024", "1536x1024", "1024x1536", "auto"])
def test_gpt_sizes(model: str, make: Any, size: str) -> None:
    make(model=model, size=size)


@pytest.mark.parametrize("model", GPT_FIXED_SIZES)
@pytest.mark.parametrize("size", ["256x256", "512x512", "1792x1024", "1536x864", "2048x2048"])
def test_gpt_other_sizes_are_refused(model: str, size: str) -> None:
    with refused("size", "is not one of 1024x1024, 1536x1024, 1024x1536, auto"):
        gen(model=model, size=size)


@pytest.mark.parametrize("model", GPT_FREE_SIZES)
@pytest.mark.parametrize("make", [gen, edit])
@pytest.mark.parametrize(
    "size",
    [
        "1536x864",
        "3840x2160",
        "2160x3840",
        "2560x1440",
        "16x48",
        "48x16",
        "512x512",
        "256x256",
        "3840x1280",
        "1792x1024",
    ],
)
def test_gpt_image_2_takes_free_sizes(model: str, make: Any, size: str) -> None:
    make(model=model, size=size)


@pytest.mark.parametrize("model", GPT_FREE_SIZES)
@pytest.mark.parametrize(
    ("size", "rule"),
    [
        ("1000x1000", "divisible by 16"),
        ("1024x1000", "divisible by 16"),
        ("1030x1024", "divisible by 16"),
        ("4096x1024", "longest edge may be at most 3840"),
        ("1024x3856", "longest edge may be at most 3840"),
        ("3840x3840", "may be at most 8294400 pixels"),
        ("3008x3008", "may be at most 8294400 pixels"),
        ("3840x1264", "between 1:3 and 3:1"),
        ("16x64", "between 1:3 and 3:1"),
    ],
)
def test_gpt_image_2_refuses_bad_free_sizes(model: str, size: str, rule: str) -> None:
    with refused("size", repr(size), model, rule):
        gen(model=model, size=size)


def test_size_rule_problem() -> None:
    rule = SizeRule()
    assert rule.problem(1536, 864) is None
    assert rule.problem(3840, 2160) is None
    assert rule.problem(1000, 1008) is not None


@pytest.mark.parametrize("model", GPT)
@pytest.mark.parametrize("make", [gen, edit])
@pytest.mark.parametrize("value", ["low", "medium", "high", "auto"])
def test_gpt_qualities(model: str, make: Any, value: str) -> None:
    make(model=model, quality=value)


@pytest.mark.parametrize("model", GPT)
@pytest.mark.parametrize("value", ["standard", "hd", "best"])
def test_gpt_other_qualities_are_refused(model: str, value: str) -> None:
    with refused("quality", repr(value), ", ".join(MODEL_RULES[model].qualities)):
        gen(model=model, quality=value)


@pytest.mark.parametrize("model", GPT)
@pytest.mark.parametrize("make", [gen, edit])
@pytest.mark.parametrize("value", ["url", "b64_json"])
def test_gpt_models_refuse_response_format(model: str, make: Any, value: str) -> None:
    with refused(
        "response_format",
        f"response_format {value!r} is not supported by {model}",
        "GPT image models always return b64_json",
    ):
        make(model=model, response_format=value)


@pytest.mark.parametrize("model", GPT)
def test_gpt_models_refuse_style(model: str) -> None:
    with refused("style", "style 'vivid' is not supported"):
        gen(model=model, style="vivid")


@pytest.mark.parametrize("model", GPT)
@pytest.mark.parametrize("make", [gen, edit])
@pytest.mark.parametrize("value", ["transparent", "opaque", "auto"])
def test_gpt_backgrounds(model: str, make: Any, value: str) -> None:
    make(model=model, background=value)


@pytest.mark.parametrize("model", GPT)
def test_gpt_other_backgrounds_are_refused(model: str) -> None:
    with refused("background", "'clear'", "transparent, opaque, auto"):
        gen(model=model, background="clear")


@pytest.mark.parametrize("model", GPT)
@pytest.mark.parametrize("make", [gen, edit])
@pytest.mark.parametrize("fmt", [None, "png", "webp"])
def test_transparent_background_with_png_or_webp(model: str, make: Any, fmt: str | None) -> None:
    make(model=model, background="transparent", output_format=fmt)


@pytest.mark.parametrize("model", GPT)
@pytest.mark.parametrize("make", [gen, edit])
def test_transparent_background_refuses_jpeg(model: str, make: Any) -> None:
    with refused("background", "'transparent' needs output_format png or webp, not 'jpeg'"):
        make(model=model, background="transparent", output_format="jpeg")


@pytest.mark.parametrize("model", GPT)
@pytest.mark.parametrize("make", [gen, edit])
@pytest.mark.parametrize("value", ["png", "jpeg", "webp"])
def test_gpt_output_formats(model: str, make: Any, value: str) -> None:
    make(model=model, output_format=value)


@pytest.mark.parametrize("model", GPT)
@pytest.mark.parametrize("value", ["jpg", "bmp", "PNG"])
def test_gpt_other_output_formats_are_refused(model: str, value: str) -> None:
    with refused("output_format", repr(value), "png, jpeg, webp, gif, svg"):
        gen(model=model, output_format=value)


@pytest.mark.parametrize("model", GPT)
@pytest.mark.parametrize("make", [gen, edit])
@pytest.mark.parametrize("fmt", ["jpeg", "webp", "png", None])
@pytest.mark.parametrize("value", [0, 50, 100])
def test_gpt_output_compression_with_any_output_format(
    model: str, make: Any, fmt: str | None, value: int
) -> None:
    make(model=model, output_format=fmt, output_compression=value)


def test_the_specs_own_json_edit_example_is_accepted() -> None:
    """gpt-image-1.5, output_format png, output_compression 100 (the documented default)."""
    edit(model="gpt-image-1.5", output_format="png", output_compression=100)


@pytest.mark.parametrize("size", ["1536x864\n", "1536x864 ", " 1536x864", "1536x864\r\n"])
@pytest.mark.parametrize("model", ["gpt-image-2", None, "my-sd-xl"])
def test_a_size_with_trailing_text_is_refused(size: str, model: str | None) -> None:
    with refused("size", "size"):
        gen(model=model, size=size)


@pytest.mark.parametrize("model", GPT)
@pytest.mark.parametrize("value", ["low", "auto"])
def test_gpt_moderation(model: str, value: str) -> None:
    gen(model=model, moderation=value)


@pytest.mark.parametrize("model", GPT)
@pytest.mark.parametrize("value", ["high", "none"])
def test_gpt_other_moderation_is_refused(model: str, value: str) -> None:
    with refused("moderation", repr(value), "low, auto"):
        gen(model=model, moderation=value)


@pytest.mark.parametrize("model", [m for m in GPT if m != "gpt-image-1-mini"])
@pytest.mark.parametrize("value", ["high", "low"])
def test_gpt_input_fidelity(model: str, value: str) -> None:
    edit(model=model, input_fidelity=value)


@pytest.mark.parametrize("model", [m for m in GPT if m != "gpt-image-1-mini"])
def test_gpt_other_input_fidelity_is_refused(model: str) -> None:
    with refused("input_fidelity", "'medium'", "high, low"):
        edit(model=model, input_fidelity="medium")


@pytest.mark.parametrize("value", ["high", "low"])
def test_gpt_image_1_mini_refuses_input_fidelity(value: str) -> None:
    with refused("input_fidelity", "not supported by gpt-image-1-mini"):
        edit(model="gpt-image-1-mini", input_fidelity=value)


@pytest.mark.parametrize("model", GPT)
def test_gpt_edits_take_up_to_16_images_of_png_webp_jpeg(model: str) -> None:
    mixed = [f(png(64, 32, alpha=False)), f(jpeg(100, 50)), f(webp(3, 9))] * 5 + [RGB]
    assert len(mixed) == 16
    edit(*mixed, model=model)
    with refused("image", "17 images"):
        edit(*mixed, RGB, model=model)


@pytest.mark.parametrize("model", GPT)
def test_gpt_edits_need_no_square_nor_alpha(model: str) -> None:
    edit(f(png(100, 30, alpha=False)), model=model)


@pytest.mark.parametrize("model", GPT)
def test_gpt_edit_images_must_be_under_50_mb(model: str) -> None:
    big = png(64, 64, size=50 * MIB)
    edit(f(big), model="my-sd-xl")  # unknown models: no byte limit
    with refused("image[1]", "less than 50 MB"):
        edit(RGBA, f(big), model=model)


def test_a_gpt_edit_image_may_be_jpeg_without_a_readable_size() -> None:
    # a JPEG whose frame header we cannot find is still sent: only dall-e-2 reads headers
    odd = b"\xff\xd8\xff\xe0" + b"\x00\x04" + b"\x00\x00" + b"\x12\x34" * 10
    edit(f(odd, "odd.jpg"), model="gpt-image-1")


@pytest.mark.parametrize("model", ["chatgpt-image-latest"])
def test_chatgpt_image_latest_generates_and_edits(model: str) -> None:
    gen(model=model)
    edit(model=model, input_fidelity="high")


# ------------------------------------------------------------------ messages


@pytest.mark.parametrize(
    ("make", "param", "fragments"),
    [
        (lambda: gen(model="dall-e-2", n=11), "n", ["n=11", "dall-e-2"]),
        (lambda: gen(model="dall-e-3", quality="low"), "quality", ["quality", "'low'", "dall-e-3"]),
        (lambda: gen(model="gpt-image-1", size="1x1"), "size", ["size", "'1x1'", "gpt-image-1"]),
        (lambda: edit(RGB, model="dall-e-2"), "image", ["image:", "rgb.png"]),
    ],
)
def test_every_message_names_the_parameter_the_value_and_the_rule(
    make: Any, param: str, fragments: list[str]
) -> None:
    with refused(param, *fragments):
        make()


def test_validation_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="dall-e-2"):
        gen(model="dall-e-2", size="300x300")


def test_dall_e_2_edits_an_rgb_image_with_a_mask() -> None:
    """Documented: only an edit *without* a mask needs transparency (see the README)."""
    edit(RGB, model="dall-e-2", mask=RGBA)
    with refused("image", "no transparency"):
        edit(RGB, model="dall-e-2")
