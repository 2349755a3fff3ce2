"""The library's side of cost: generate_many within a budget, and what a stream cost,
against the emulator (its usage: 272 output tokens a 1024x1024 low image)."""

from __future__ import annotations

import pytest

from asyncimg import AsyncImagesClient, Budget, CompletedImageEvent, PriceTable, cost_of
from asyncimg._cost import ModelPrices
from asyncimg.testing import Emulator

# $0.30 an image, estimated (272 documented tokens) and actual (the emulator's 272) alike.
PRICES = PriceTable({"gpt-image-1": ModelPrices(
    text_input=0.0, image_output=0.30 / 272 * 1e6,
    image_output_tokens={("1024x1024", "low"): 272},
)})
PARAMS = {"model": "gpt-image-1", "size": "1024x1024", "quality": "low"}


async def test_generate_many_sends_nothing_past_its_budget(
    client: AsyncImagesClient, emu: Emulator
) -> None:
    budget = Budget(1.0)
    prompts = [f"prompt {i}" for i in range(10)]
    async with client.generate_many(prompts, budget=budget, prices=PRICES,
                                    **PARAMS) as items:  # type: ignore[arg-type]
        results = [item async for item in items]
    sent = [item for item in results if item.ok]
    refused = [item for item in results if not item.ok]
    assert len(sent) == 3
    assert len(emu.requests("/v1/images/generations")) == 3
    assert all(getattr(item.error, "param", None) == "max_cost" for item in refused)
    assert budget.spent == pytest.approx(0.90)
    assert budget.reserved == 0.0
    assert sum(cost_of(item.response, "gpt-image-1", PRICES) or 0 for item in sent) \
        == pytest.approx(budget.spent)


async def test_a_streams_cost_is_its_completed_events_usage(client: AsyncImagesClient) -> None:
    stream = await client.generate("a lantern", stream=True, partial_images=2,
                                   **PARAMS)  # type: ignore[arg-type]
    async with stream:
        events = [event async for event in stream]
    final = events[-1]
    assert isinstance(final, CompletedImageEvent)
    assert final.usage is not None
    expected = (final.usage.output_tokens or 0) * 0.30 / 272
    assert cost_of(final, "gpt-image-1", PRICES) == pytest.approx(expected)
