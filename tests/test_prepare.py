"""asyncimg.prepare: square PNGs, masks and per-model preparation, on real pictures."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
from PIL import Image

from asyncimg import AsyncImagesClient, ValidationError
from asyncimg._files import ImageFile
from asyncimg._params import EditParams, VariationParams
from asyncimg._validation import rules_for
from asyncimg.prepare import (
    MAX_EDGE,
    Prepared,
    for_model,
    mask_from_box,
    mask_from_image,
    square_png,
)
from asyncimg.testing import Emulator

from .conftest import TEST_KEY
from .pictures import (
    BLUE,
    CORNERS,
    RED,
    corner_colours,
    decode,
    encode,
    noise,
    photo,
    png16_rgba,
    python_without_pillow,
    quadrants,
)

T = Image.Transpose
# What a camera stores for each EXIF orientation so that, shown as the tag says, the
# picture is upright (EXIF 2.32, Orientation): the inverse of each display transform.
STORED_FOR_ORIENTATION: dict[int, T | None] = {
    1: None,
    2: T.FLIP_LEFT_RIGHT,  # shown mirrored left-right
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,  # mirrored about the top-left/bottom-right diagonal
    6: T.ROTATE_90,  # shown turned 90 degrees clockwise, so stored turned counter-clockwise
    7: T.TRANSVERSE,
    8: T.ROTATE_270,  # shown turned 90 degrees counter-clockwise
}


def _jpeg_with_orientation(orientation: int) -> bytes:
    upright = quadrants(80, 60)
    turn = STORED_FOR_ORIENTATION[orientation]
    stored = upright if turn is None else upright.transpose(turn)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    result = decode(square_png(_jpeg_with_orientation(orientation), size=64, fit="crop"))
    assert result.size == (64, 64)
    assert result.mode == "RGBA"
    assert corner_colours(result) == CORNERS


def test_every_kind_of_input_gives_the_same_png(tmp_path: Path) -> None:
    data = encode(quadrants())
    path = tmp_path / "q.png"
    path.write_bytes(data)
    inputs: list[Any] = [
        data, str(path), path, io.BytesIO(data), ("q.png", data), ImageFile.from_bytes(data),
        Image.open(io.BytesIO(data)),
    ]
    results = {square_png(value, size=32) for value in inputs}
    assert len(results) == 1


def test_pad_keeps_the_whole_picture_on_a_transparent_square() -> None:
    result = decode(square_png(encode(quadrants(80, 40)), size=64))
    assert result.getpixel((32, 4)) == (0, 0, 0, 0)  # the band above the picture
    assert result.getpixel((32, 60)) == (0, 0, 0, 0)
    assert result.getpixel((4, 20))[3] == 255
    assert corner_colours(result.crop((0, 16, 64, 48))) == CORNERS


def test_pad_background_and_crop() -> None:
    wide = encode(quadrants(80, 40))
    white = decode(square_png(wide, size=64, background=(255, 255, 255)))
    assert white.getpixel((32, 2)) == (255, 255, 255, 255)
    cropped = decode(square_png(wide, size=64, fit="crop"))
    assert cropped.getextrema()[3] == (255, 255)  # nothing padded
    assert corner_colours(cropped) == CORNERS


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (64, 48), (0, 255, 255, 0))  # red in ink
    result = decode(square_png(encode(cmyk, "JPEG"), size=32, fit="crop"))
    r, g, b, a = result.getpixel((16, 16))  # type: ignore[misc]
    assert r > 230
    assert g < 25
    assert b < 25
    assert a == 255


def test_greyscale_jpeg_and_palette_png_with_transparency() -> None:
    # JPEG has no palette mode: a palette picture comes as PNG or GIF.
    grey = decode(square_png(encode(Image.new("L", (40, 40), 200), "JPEG"), size=16))
    assert grey.getpixel((8, 8))[:3] == (200, 200, 200)
    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.paste(0, (0, 0, 20, 40))
    result = decode(square_png(encode(palette, transparency=0), size=40))
    assert result.getpixel((5, 20)) == (0, 0, 0, 0)
    assert result.getpixel((30, 20)) == (255, 0, 0, 255)


def test_16_bit_pngs_are_scaled_not_clipped() -> None:
    grey = encode(Image.new("I;16", (32, 32), 0x8080))
    assert decode(square_png(grey, size=16)).getpixel((8, 8)) == (128, 128, 128, 255)
    rgba = png16_rgba(32, 32, (0xFFFF, 0x8080, 0x0000, 0xFFFF))
    assert decode(square_png(rgba, size=16)).getpixel((8, 8)) == (255, 128, 0, 255)
    assert decode(mask_from_image(grey)).getpixel((8, 8))[3] == 128


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), RED), Image.new("RGB", (40, 40), BLUE)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(gif)).n_frames == 2
    assert decode(square_png(gif, size=16)).getpixel((8, 8)) == (*RED, 255)


def test_over_max_bytes_it_quantizes_then_steps_down() -> None:
    picture = noise(512)  # as PNG: 0.86 MB at zlib level 1, 0.79 MB at 6, 0.43 MB quantized
    plain = square_png(picture, size=512, max_bytes=10**9)
    assert len(plain) > 800_000
    quantized = square_png(picture, size=512, max_bytes=700_000)
    image = decode(quantized)
    assert image.size == (512, 512)
    assert image.mode == "RGBA"
    assert len(image.getcolors(256) or ()) <= 256
    smaller = decode(square_png(picture, size=512, max_bytes=400_000))
    assert smaller.size == (256, 256)  # the next square size dall-e-2 takes
    assert len(smaller.getcolors(256**2) or ()) > 256  # not quantized: it fits as it is


def test_quantizing_keeps_the_transparent_padding() -> None:
    wide = noise(512).crop((0, 0, 512, 256))  # padded: 0.44 MB as PNG, 0.27 MB quantized
    image = decode(square_png(wide, size=512, max_bytes=300_000))
    assert len(image.getcolors(256) or ()) <= 256
    assert image.getpixel((5, 5)) == (0, 0, 0, 0)  # still transparent: a dall-e-2 edit area
    assert image.getpixel((5, 256))[3] == 255


def test_no_step_fits_says_why() -> None:
    with pytest.raises(ValidationError) as caught:
        square_png(noise(64), size=64, max_bytes=100)
    assert caught.value.param == "image"
    assert "under 100 bytes" in str(caught.value)
    assert "64x64" in str(caught.value)
    assert "256 colours" in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"size": 0}, "size"),
        ({"size": True}, "size"),
        ({"size": MAX_EDGE + 1}, "size"),  # refused before a pixel is allocated
        ({"fit": "stretch"}, "fit"),
        ({"background": (300, 0, 0)}, "background"),
        ({"background": "white"}, "background"),
        ({"max_bytes": 0}, "max_bytes"),
    ],
)
def test_square_png_refuses_bad_arguments(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as caught:
        square_png(encode(quadrants()), **kwargs)
    assert caught.value.param == param


def test_unreadable_and_broken_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not an image Pillow can read"):
        square_png(b"plain text, no picture")
    jpeg = encode(photo(200, 150), "JPEG")
    with pytest.raises(ValidationError, match="does not decode") as caught:
        square_png(jpeg[: len(jpeg) // 2])
    assert caught.value.param == "image"
    with pytest.raises(ValidationError, match="cannot read"):
        square_png(tmp_path / "missing.jpg")


# -------------------------------------------------------------------- masks


def test_mask_from_box() -> None:
    mask = decode(mask_from_box((64, 32), (8, 4, 24, 16)))
    assert mask.mode == "RGBA"
    assert mask.size == (64, 32)
    assert mask.getpixel((8, 4)) == (0, 0, 0, 0)
    assert mask.getpixel((23, 15)) == (0, 0, 0, 0)
    assert mask.getpixel((24, 15))[3] == 255  # x1 is excluded
    assert mask.getpixel((7, 4))[3] == 255
    assert decode(mask_from_box(16, (0, 0, 16, 16))).getextrema()[3] == (0, 0)


def test_feathered_mask_has_a_soft_edge() -> None:
    alpha = decode(mask_from_box(64, (16, 16, 48, 48), feather=4)).getchannel("A")
    assert alpha.getpixel((32, 32)) == 0
    assert alpha.getpixel((2, 2)) == 255
    assert 0 < alpha.getpixel((16, 32)) < 255  # type: ignore[operator]


@pytest.mark.parametrize(
    ("size", "box", "feather", "param"),
    [
        ((64, 32), (8, 4, 65, 16), 0, "box"),
        ((64, 32), (8, 4, 8, 16), 0, "box"),
        ((64, 32), (-1, 0, 8, 8), 0, "box"),
        ((64, 32), (0.5, 0, 8, 8), 0, "box"),
        ((64, 32), (0, 0, 8), 0, "box"),
        ((0, 32), (0, 0, 8, 8), 0, "size"),
        ((64, 32), (0, 0, 8, 8), -1, "feather"),
    ],
)
def test_mask_from_box_refuses(size: Any, box: Any, feather: Any, param: str) -> None:
    with pytest.raises(ValidationError) as caught:
        mask_from_box(size, box, feather=feather)
    assert caught.value.param == param


def test_mask_from_image_black_marks_the_edit() -> None:
    picture = Image.new("L", (40, 20), 255)
    picture.paste(0, (0, 0, 20, 20))
    mask = decode(mask_from_image(encode(picture)))
    assert mask.mode == "RGBA"
    assert mask.getpixel((5, 10))[3] == 0
    assert mask.getpixel((30, 10))[3] == 255
    inverted = decode(mask_from_image(picture, invert=True))
    assert inverted.getpixel((5, 10))[3] == 255
    assert inverted.getpixel((30, 10))[3] == 0


# ---------------------------------------------------------------- for_model


def _validates(model: str, ready: Prepared, *, edit: bool = True) -> None:
    image = (ImageFile.from_bytes(ready.image),)
    mask = None if ready.mask is None else ImageFile.from_bytes(ready.mask)
    if edit:
        EditParams.build(image=image, prompt="p", mask=mask, model=model)
    else:
        VariationParams.build(image=image, model=model)


@pytest.mark.parametrize(("size", "edge"), [((300, 200), 512), ((200, 200), 256), ((90, 30), 256)])
def test_dall_e_2_takes_the_smallest_square_that_holds_it(
    size: tuple[int, int], edge: int
) -> None:
    ready = for_model("dall-e-2", encode(quadrants(*size), "JPEG"))
    assert ready.format == "png"
    assert ready.size == (edge, edge)
    assert ready.mask is None
    assert decode(ready.image).size == (edge, edge)
    _validates("dall-e-2", ready, edit=False)
    _validates("dall-e-2", ready)  # padded: it has transparency, so an edit takes it


def test_dall_e_2_mask_gets_the_image_geometry() -> None:
    picture = quadrants(400, 200)
    mask = mask_from_box((400, 200), (0, 0, 100, 100))
    ready = for_model("dall-e-2", encode(picture), mask=mask)
    assert ready.size == (512, 512)
    assert ready.mask is not None
    out = decode(ready.mask)
    assert out.size == (512, 512)
    assert out.getpixel((20, 150))[3] == 0  # the box, moved down by the padding (128 px)
    assert out.getpixel((20, 20))[3] == 255  # the padding is kept, not edited
    assert out.getpixel((300, 300))[3] == 255
    _validates("dall-e-2", ready)


def test_the_mask_must_have_the_image_size() -> None:
    with pytest.raises(ValidationError) as caught:
        for_model("dall-e-2", encode(quadrants(80, 60)), mask=mask_from_box((60, 80), (0, 0, 9, 9)))
    assert caught.value.param == "mask"
    assert "80x60" in str(caught.value)


def test_a_model_without_input_images_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        for_model("dall-e-3", encode(quadrants()))
    assert caught.value.param == "model"


@pytest.mark.parametrize("model", ["gpt-image-1", "my-own-model", None])
def test_gpt_and_unknown_models_keep_what_they_take(model: str | None) -> None:
    for fmt in ("PNG", "JPEG", "WEBP"):
        data = encode(quadrants(), fmt)
        ready = for_model(model, data)
        assert ready.image == data  # unchanged: no squaring, no re-encoding
        assert ready.size == (80, 60)
    gif = encode(quadrants(mode="P"), "GIF")
    ready = for_model(model, gif)
    assert ready.format == "png"
    assert ready.image.startswith(b"\x89PNG")
    assert corner_colours(decode(ready.image)) == CORNERS


def test_gpt_gets_16_bit_grey_scaled_and_without_an_alpha_channel() -> None:
    ready = for_model("gpt-image-1", encode(Image.new("I;16", (32, 32), 0x8080), "TIFF"))
    picture = decode(ready.image)
    assert ready.format == "png"
    assert picture.mode == "RGB"
    assert picture.getpixel((8, 8)) == (128, 128, 128)


def test_gpt_applies_the_exif_orientation_and_sizes_the_mask() -> None:
    turned = _jpeg_with_orientation(6)  # stored 60x80, shown 80x60
    mask = mask_from_box((80, 60), (0, 0, 40, 30))
    ready = for_model("gpt-image-1", turned, mask=mask)
    assert ready.format == "png"
    assert ready.size == (80, 60)
    assert corner_colours(decode(ready.image)) == CORNERS
    assert ready.mask is not None
    assert decode(ready.mask).size == (80, 60)
    _validates("gpt-image-1", ready)


def test_gpt_too_large_becomes_lossy_then_smaller(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = rules_for("gpt-image-1")
    assert rules is not None
    small = attrs.evolve(rules, max_image_bytes=20_000)
    monkeypatch.setattr("asyncimg.prepare.rules_for", lambda _model: small)
    ready = for_model("gpt-image-1", encode(noise(256)))
    assert ready.format == "webp"
    assert len(ready.image) < 20_000
    assert decode(ready.image).size == ready.size


def test_a_12_megapixel_photo_for_dall_e_2() -> None:
    jpeg = encode(photo(4000, 3000), "JPEG", quality=92)
    with pytest.raises(ValidationError):  # as it comes from the camera: refused
        VariationParams.build(image=(ImageFile.from_bytes(jpeg),), model="dall-e-2")
    ready = for_model("dall-e-2", jpeg)
    assert ready.size == (1024, 1024)
    assert len(ready.image) < 4 * 1024 * 1024
    picture = decode(ready.image)
    assert picture.mode == "RGBA"
    assert picture.getpixel((512, 100))[3] == 0
    assert picture.getpixel((512, 512))[3] == 255
    _validates("dall-e-2", ready, edit=False)


async def test_prepared_images_are_taken_by_the_emulator() -> None:
    picture = encode(quadrants(300, 200), "JPEG")
    ready = for_model("dall-e-2", picture, mask=mask_from_box((300, 200), (10, 10, 100, 100)))
    async with Emulator(api_key=TEST_KEY) as emu, AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=None
    ) as client:
        edited = await client.edit(
            ready.image, "a hat", mask=ready.mask, model="dall-e-2", size="256x256",
            response_format="b64_json",
        )
        varied = await client.create_variation(
            ready.image, model="dall-e-2", size="256x256", response_format="b64_json"
        )
    assert len(edited.data) == 1
    assert len(varied.data) == 1


def test_without_pillow_the_import_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys, asyncimg\n"
        "assert 'PIL' not in sys.modules\n"
        "try:\n"
        "    import asyncimg.prepare\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported')\n"
    )
    done = python_without_pillow(code, tmp_path)
    assert "pip install 'asyncimg[images]'" in done.stdout


def test_pillow_is_imported_only_when_used() -> None:
    code = (
        "import sys, asyncimg, asyncimg.cli, asyncimg.testing\n"
        "assert 'PIL' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
