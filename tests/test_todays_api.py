"""Today's API (past the spec copy): GPT Image 2.5/2.6, GIF and SVG output, markup,
complexity, safety_identifier; through asyncimg and through the official SDK,
both against the emulator."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import openai
import pytest
from PIL import Image, ImageSequence

from asyncimg import AsyncImagesClient, ValidationError
from asyncimg._files import sniff_mime
from asyncimg._validation import rules_for
from asyncimg.testing import Emulator, make_png
from asyncimg.testing.pytest_plugin import EMULATOR_API_KEY, emulator  # noqa: F401

SUNBURST = "gpt-image-2.5-sunburst"


def client_for(emu: Emulator) -> AsyncImagesClient:
    return AsyncImagesClient(api_key=EMULATOR_API_KEY, base_url=emu.base_url, max_retries=0)


def sdk(emu: Emulator) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=emu.base_url, api_key=EMULATOR_API_KEY, max_retries=0)


def frames_of(data: bytes) -> list[Image.Image]:
    with Image.open(io.BytesIO(data)) as gif:
        assert gif.format == "GIF"
        return [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]


# -- the rule table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-image-2.5-sunburst-2026-09-08", "gpt-image-2.5-sunburst"),
        ("gpt-image-2.5-flare-2026-09-08", "gpt-image-2.5-flare"),
        ("gpt-image-1.5-2027-01-01", "gpt-image-1.5"),
    ],
)
def test_dated_snapshots_take_their_family_rules(model: str, family: str) -> None:
    rules, family_rules = rules_for(model), rules_for(family)
    assert rules is not None
    assert family_rules is not None
    assert rules.name == model
    assert rules.qualities == family_rules.qualities
    assert rules.free_sizes == family_rules.free_sizes


@pytest.mark.parametrize(
    "model", ["gpt-image-9-2026-09-08", "my-model-2026-01-01", "gpt-image-2.5"]
)
def test_unknown_models_and_snapshots_stay_unblocked(model: str) -> None:
    assert rules_for(model) is None


async def test_2_5_qualities_sizes_and_complexity(emulator: Emulator) -> None:  # noqa: F811
    async with client_for(emulator) as client:
        r = await client.generate(
            "a kite",
            model="gpt-image-2.5-flare-2026-09-08",
            quality="xhigh",
            size="1536x864",
            complexity="high",
        )
        assert (r.quality, r.size) == ("xhigh", "1536x864")
        r = await client.images.generate(prompt="a kite", model=SUNBURST, quality="max")
        assert r.quality == "max"
        with pytest.raises(ValidationError, match="xhigh") as info:
            await client.generate("a kite", model="gpt-image-2.6-flare", quality="xhigh")
        assert info.value.param == "quality"
        with pytest.raises(ValidationError) as info:
            await client.generate("a kite", model="dall-e-3", complexity="low")
        assert info.value.param == "complexity"
        with pytest.raises(ValidationError) as info:
            await client.generate("a kite", model=SUNBURST, complexity="extreme")
        assert info.value.param == "complexity"
    sent = emulator.requests("generate")
    assert sent[0].json["complexity"] == "high"
    assert sent[0].json["model"] == "gpt-image-2.5-flare-2026-09-08"


# -- GIF -----------------------------------------------------------------------------


async def test_gif_output_has_the_frames_asked_for(emulator: Emulator, tmp_path: Path) -> None:  # noqa: F811
    async with client_for(emulator) as client:
        r = await client.generate(
            "a spinning top",
            model=SUNBURST,
            output_format="gif",
            size="1024x1024",
            frame_count=4,
            frame_duration_ms=120,
        )
        assert r.output_format == "gif"
        data = await client.download(r.data[0])
        paths = await client.save(r, tmp_path)
        default = await client.generate("a top", model=SUNBURST, output_format="gif")
        default_frames = frames_of(await client.download(default.data[0]))
    frames = frames_of(data)
    assert len(frames) == 4
    assert frames[0].size == (1024, 1024)
    assert len({frame.getpixel((0, 0)) for frame in frames}) == 4  # it animates
    with Image.open(io.BytesIO(data)) as gif:
        assert gif.info["duration"] == 120
    assert len(default_frames) == 9
    assert paths[0].suffix == ".gif"
    assert paths[0].read_bytes() == data
    assert emulator.requests("generate")[0].json["frame_count"] == 4


@pytest.mark.parametrize(
    ("kwargs", "param", "says"),
    [
        ({"frame_count": 4}, "frame_count", "only with output_format='gif'"),
        ({"output_format": "gif", "frame_count": 1}, "frame_count", "outside 2..16"),
        ({"output_format": "gif", "frame_count": 17}, "frame_count", "outside 2..16"),
        ({"output_format": "png", "frame_duration_ms": 100}, "frame_duration_ms", "'gif'"),
        ({"output_format": "gif", "stream": True}, "stream", "GIF output cannot be streamed"),
        ({"output_format": "gif", "partial_images": 1}, "partial_images", "GIF"),
        ({"output_format": "gif", "output_compression": 50}, "output_compression", "GIF"),
        ({"output_format": "svg", "n": 2}, "n", "n must be 1"),
        ({"output_format": "svg", "stream": True}, "stream", "SVG output cannot be streamed"),
        ({"output_format": "svg", "output_compression": 80}, "output_compression", "SVG"),
        ({"output_format": "png", "svg": {"model": "m"}}, "svg", "only with output_format='svg'"),
        ({"output_format": "svg", "svg": {"model": ""}}, "svg", "must name a model"),
    ],
)
@pytest.mark.parametrize("model", [SUNBURST, None, "my-model"])
async def test_gif_and_svg_combinations_are_refused_before_sending(
    emulator: Emulator,  # noqa: F811
    kwargs: dict[str, object],
    param: str,
    says: str,
    model: str | None,
) -> None:
    async with client_for(emulator) as client:
        with pytest.raises(ValidationError) as info:
            await client.generate("p", model=model, **kwargs)  # type: ignore[arg-type]
    assert info.value.param == param
    assert says in str(info.value)
    assert not emulator.requests()


async def test_gif_edit_takes_no_mask(emulator: Emulator) -> None:  # noqa: F811
    async with client_for(emulator) as client:
        with pytest.raises(ValidationError) as info:
            await client.edit(
                make_png(64, 64, "in"),
                "p",
                mask=make_png(64, 64, "m", alpha=True),
                model=SUNBURST,
                output_format="gif",
            )
        assert info.value.param == "mask"
        r = await client.edit(
            make_png(64, 64, "in"), "p", model=SUNBURST, output_format="gif", frame_count=3
        )
        assert len(frames_of(await client.download(r.data[0]))) == 3


# -- SVG -----------------------------------------------------------------------------


async def test_svg_output_and_its_usage(emulator: Emulator, tmp_path: Path) -> None:  # noqa: F811
    async with client_for(emulator) as client:
        r = await client.images.generate(
            prompt="a logo",
            model=SUNBURST,
            output_format="svg",
            svg={"model": "gpt-5.5", "reasoning": {"effort": "low"}},
        )
        data = await client.download(r.data[0])
        paths = await client.save(r, tmp_path)
        e = await client.edit(
            make_png(64, 64, "in"),
            "vectorise",
            model=SUNBURST,
            output_format="svg",
            svg={"model": "gpt-5.5", "reasoning": {"effort": "high"}},
        )
    assert sniff_mime(data) == "image/svg+xml"
    assert data.lstrip().startswith(b"<?xml")
    assert b"<svg" in data
    assert paths[0].suffix == ".svg"
    assert r.svg_usage is not None
    assert r.svg_usage.model == "gpt-5.5"
    assert r.svg_usage.reasoning_tokens is not None
    assert r.usage is not None
    assert r.usage.total_tokens is not None
    assert r.total_tokens == r.usage.total_tokens + (r.svg_usage.total_tokens or 0)
    assert r.model_dump()["svg_usage"]["model"] == "gpt-5.5"
    assert e.svg_usage is not None
    assert e.svg_usage.reasoning_tokens == 1024
    generate = emulator.requests("generate")[0]
    assert generate.json["svg"] == {"model": "gpt-5.5", "reasoning": {"effort": "low"}}
    edit = emulator.requests("edit")[0]
    assert edit.fields["svg[model]"] == "gpt-5.5"
    assert edit.fields["svg[reasoning][effort]"] == "high"


# -- markup --------------------------------------------------------------------------


async def test_markup_on_an_edit(emulator: Emulator) -> None:  # noqa: F811
    image = make_png(96, 64, "in")
    markup = make_png(96, 64, "arrows", alpha=True)
    async with client_for(emulator) as client:
        r = await client.images.edit(
            image=image, prompt="follow the arrows", model=SUNBURST, markup=markup
        )
        assert r.data
        refusals = [
            ({"markup": markup, "mask": make_png(96, 64, "m", alpha=True)}, SUNBURST),
            ({"markup": make_png(64, 64, "small", alpha=True)}, SUNBURST),
            ({"markup": make_png(96, 64, "opaque")}, SUNBURST),
            ({"markup": markup}, "gpt-image-2.6-flare"),
            ({"markup": markup}, "gpt-image-1.5"),
        ]
        for kwargs, model in refusals:
            with pytest.raises(ValidationError) as info:
                await client.edit(image, "p", model=model, **kwargs)  # type: ignore[arg-type]
            assert info.value.param == "markup", str(info.value)
        # a model the table does not know gets the universal checks only (sent to a
        # compatible server, which takes any name)
        emulator.any_model = True
        await client.edit(image, "p", model="my-model", markup=markup)
    sent = emulator.requests("edit")
    assert [(f.field, f.mime) for f in sent[0].files] == [
        ("image", "image/png"),
        ("markup", "image/png"),
    ]
    assert len(sent) == 2


# -- safety_identifier ---------------------------------------------------------------


async def test_safety_identifier_is_sent_and_echoed(emulator: Emulator) -> None:  # noqa: F811
    async with client_for(emulator) as client:
        r = await client.generate("p", model=SUNBURST, safety_identifier="user-hash-1")
        stream = await client.images.generate(
            prompt="p", model=SUNBURST, stream=True, safety_identifier="user-hash-2"
        )
        events = [event async for event in stream]
        legacy = await client.generate("p", model="gpt-image-1.5", user="old-user")
    assert r.safety_identifier == "user-hash-1"
    assert events[-1].safety_identifier == "user-hash-2"  # type: ignore[union-attr]
    assert legacy.safety_identifier == "old-user"
    assert emulator.requests("generate")[0].json["safety_identifier"] == "user-hash-1"


# -- the official SDK against the emulator -------------------------------------------


async def test_official_sdk_gif_svg_markup_complexity_safety(emulator: Emulator) -> None:  # noqa: F811
    async with sdk(emulator) as client:
        gif = await client.images.generate(
            prompt="a top",
            model=SUNBURST,
            output_format="gif",
            frame_count=5,
            frame_duration_ms=100,
            complexity="medium",
            safety_identifier="h-1",
        )
        svg = await client.images.generate(
            prompt="a logo",
            model="gpt-image-2.5-flare-2026-09-08",
            output_format="svg",
            svg={"model": "gpt-5.5", "reasoning": {"effort": "minimal"}},
        )
        marked = await client.images.edit(
            image=("in.png", make_png(64, 48, "in"), "image/png"),
            markup=("markup.png", make_png(64, 48, "arrows", alpha=True), "image/png"),
            prompt="follow the arrows",
            model=SUNBURST,
            quality="xhigh",
            output_format="svg",
            svg={"model": "gpt-5.5"},
        )
        with pytest.raises(openai.BadRequestError) as bad:
            await client.images.generate(
                prompt="p", model=SUNBURST, output_format="gif", frame_count=20
            )
    assert gif.data is not None
    assert gif.data[0].b64_json is not None
    assert len(frames_of(base64.b64decode(gif.data[0].b64_json))) == 5
    assert gif.safety_identifier == "h-1"
    assert svg.svg_usage is not None
    assert svg.svg_usage.model == "gpt-5.5"
    assert svg.data is not None
    assert svg.data[0].b64_json is not None
    assert sniff_mime(base64.b64decode(svg.data[0].b64_json)) == "image/svg+xml"
    assert marked.quality == "xhigh"
    assert bad.value.param == "frame_count"
    edit = emulator.requests("edit")[0]
    assert [f.field for f in edit.files] == ["image", "markup"]
    assert edit.fields["svg[model]"] == "gpt-5.5"
