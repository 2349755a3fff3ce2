"""One declaration of each endpoint's keywords (asyncimg._keywords) and who reads it."""

from __future__ import annotations

import attrs
import pytest

from asyncimg import AsyncImagesClient, ValidationError
from asyncimg._keywords import (
    EDIT_KEYWORDS,
    GENERATE_KEYWORDS,
    OPTIONS,
    VARIATION_KEYWORDS,
)
from asyncimg._params import EditParams, GenerateParams, JsonEditParams, VariationParams
from asyncimg.testing import Emulator


@pytest.mark.parametrize(
    ("declared", "params", "positional"),
    [
        (GENERATE_KEYWORDS, (GenerateParams,), {"prompt", "stream"}),
        # An edit is multipart, or JSON with images by reference (which takes moderation).
        (EDIT_KEYWORDS, (EditParams, JsonEditParams), {"prompt", "image", "image_refs", "stream"}),
        (VARIATION_KEYWORDS, (VariationParams,), {"image"}),
    ],
)
def test_each_declaration_names_exactly_the_fields_its_request_sends(
    declared: frozenset[str], params: tuple[type, ...], positional: set[str]
) -> None:
    fields = {a.name for cls in params for a in attrs.fields(cls)}
    assert declared - OPTIONS == fields - positional - {"extra_body"}
    assert {
        "extra_body", "timeout", "max_retries", "extra_headers", "extra_query", "stats"
    } == OPTIONS <= declared


async def test_an_unknown_keyword_is_refused_before_anything_is_sent(
    client: AsyncImagesClient, emu: Emulator
) -> None:
    with pytest.raises(ValidationError) as caught:
        await client.generate("a cat", input_fidelity="high")  # type: ignore[call-arg]
    assert caught.value.param == "input_fidelity"
    with pytest.raises(ValidationError) as caught:
        await client.create_variation(b"x", quality="high")  # type: ignore[call-arg]
    assert caught.value.param == "quality"
    assert emu.requests() == []


async def test_the_per_call_options_are_not_sent(
    client: AsyncImagesClient, emu: Emulator
) -> None:
    await client.generate("a cat", model="dall-e-2", timeout=30.0, max_retries=0, n=1)
    (request,) = emu.requests()
    assert set(request.json) == {"prompt", "model", "n"}


async def test_generate_many_takes_the_declared_keywords(client: AsyncImagesClient) -> None:
    with pytest.raises(ValidationError) as caught:
        client.generate_many(["a"], mask=b"x")  # type: ignore[call-arg]
    assert caught.value.param == "mask"
    items = [i async for i in client.generate_many(["a"], model="dall-e-2", max_retries=0)]
    assert items[0].error is None
