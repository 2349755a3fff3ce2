"""Prices as data, the cost of a call, estimates and the budget: pure, no event loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asyncimg import ImagesResponse, Usage, cost_of
from asyncimg._cost import (
    Budget,
    Observed,
    estimate_request,
    load_prices,
    request_key,
)

USAGE = {
    "input_tokens": 50,
    "output_tokens": 4160,
    "total_tokens": 4210,
    "input_tokens_details": {"text_tokens": 40, "image_tokens": 10},
    "output_tokens_details": {"image_tokens": 4160, "text_tokens": 0},
}


def test_shipped_table_has_the_gpt_image_families_with_their_date() -> None:
    table = load_prices()
    for family in ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2"):
        prices = table.get(family)
        assert prices is not None
        assert prices.image_output
        assert prices.taken
    gpt1 = table.get("gpt-image-1")
    assert gpt1 is not None
    assert gpt1.image_output_tokens[("1024x1024", "high")] == 4160


def test_a_dated_snapshot_takes_its_family_and_unknown_models_have_no_price() -> None:
    table = load_prices()
    assert table.family("gpt-image-1.5-2025-12-16") == "gpt-image-1.5"
    assert table.family("gpt-image-1-mini") == "gpt-image-1-mini"  # not gpt-image-1
    assert table.get("dall-e-3") is None
    assert cost_of(Usage.from_json(USAGE), "some-new-model") is None


def test_cost_splits_text_image_input_and_output_at_their_rates() -> None:
    usage = Usage.from_json(USAGE)
    # gpt-image-1: text 5, image in 10, image out 40 (USD per 1M tokens)
    expected = (40 * 5 + 10 * 10 + 4160 * 40) / 1e6
    assert cost_of(usage, "gpt-image-1") == pytest.approx(expected)
    assert cost_of(usage, "gpt-image-1-2025-04-23") == pytest.approx(expected)
    assert cost_of(usage, "gpt-image-1", batch_api=True) == pytest.approx(expected / 2)
    response = ImagesResponse.from_json({"created": 1, "data": [], "usage": USAGE})
    assert cost_of(response, "gpt-image-1") == pytest.approx(expected)
    assert cost_of(None, "gpt-image-1") is None


def test_cached_tokens_are_priced_at_the_cached_rates() -> None:
    usage = Usage.from_json({
        **USAGE,
        "input_tokens_details": {"text_tokens": 40, "image_tokens": 10,
                                 "cached_tokens_details": {"text_tokens": 40,
                                                           "image_tokens": 10}},
    })
    expected = (40 * 1.25 + 10 * 2.5 + 4160 * 40) / 1e6
    assert cost_of(usage, "gpt-image-1") == pytest.approx(expected)


def test_a_missing_rate_that_tokens_need_is_an_unknown_cost(tmp_path: Path) -> None:
    usage = Usage.from_json({**USAGE, "output_tokens_details": {"image_tokens": 4000,
                                                                 "text_tokens": 160}})
    # gpt-image-1 publishes no text output rate: text output tokens make it unknown.
    assert cost_of(usage, "gpt-image-1") is None
    assert cost_of(usage, "gpt-image-1.5") is not None


def test_a_users_file_overrides_field_by_field_and_adds_models(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"gpt-image-1": {"image_output": 20.0},
                                "my-model": {"image_output": 300000.0}}))
    table = load_prices(path)
    gpt1 = table.get("gpt-image-1")
    assert gpt1 is not None
    assert gpt1.image_output == 20.0
    assert gpt1.text_input == 5.0
    usage = Usage.from_json({"input_tokens": 0, "output_tokens": 1})
    assert cost_of(usage, "my-model", table) == pytest.approx(0.30)
    path.write_text(json.dumps({"my-model": {"image_output": "cheap"}}))
    with pytest.raises(ValueError, match="not a price"):
        load_prices(path)


def test_estimate_from_documented_tokens_then_learned_then_unknown() -> None:
    table = load_prices()
    documented = estimate_request(
        {"model": "gpt-image-1", "size": "1024x1536", "quality": "medium", "n": 2},
        prompt="x" * 40, prices=table,
    )
    assert documented.basis == "documented"
    assert documented.usd == pytest.approx((10 * 5 + 2 * 1584 * 40) / 1e6)
    auto = estimate_request({"model": "gpt-image-1"}, prices=table)
    assert auto.usd == pytest.approx(6240 * 40 / 1e6)  # the largest: an upper bound
    streamed = estimate_request({"model": "gpt-image-1", "size": "1024x1024", "quality": "low",
                                 "partial_images": 2}, prices=table)
    assert streamed.usd == pytest.approx((272 + 200) * 40 / 1e6)
    params = {"model": "gpt-image-2", "size": "1024x1024", "quality": "high"}
    unknown = estimate_request(params, prices=table)
    assert unknown.usd is None
    assert unknown.basis == "unknown"
    observed = Observed()
    observed.add(request_key(params), 0.20)
    observed.add(request_key(params), 0.22)
    learned = estimate_request(params, prices=table, observed=observed)
    assert learned.basis == "learned"
    assert learned.usd == pytest.approx(0.21)
    assert estimate_request({"model": "dall-e-3"}, prices=table).usd is None
    halved = estimate_request({"model": "gpt-image-1", "size": "1024x1024", "quality": "low"},
                              prices=table, batch_api=True)
    assert halved.usd == pytest.approx(272 * 40 / 1e6 / 2)


def test_budget_reserves_settles_and_never_goes_over() -> None:
    budget = Budget(limit=1.0)
    key = request_key({"model": "m"})
    assert budget.reserve(0.3)
    assert budget.reserve(0.3)
    assert budget.reserve(0.3)
    assert not budget.reserve(0.3)  # 1.2 would go over
    budget.settle(0.3, key, 0.25)
    budget.settle(0.3, key, 0.35)  # cost more than estimated: later reservations follow
    assert budget.reservation(key, 0.3) == pytest.approx(0.35)
    budget.release(0.3)  # never sent
    assert budget.spent == pytest.approx(0.60)
    assert budget.reserved == 0.0
    assert budget.remaining == pytest.approx(0.40)
    assert not budget.reserve(budget.reservation(key, 0.3) * 2)
    budget.settle(0.0, key, None)  # an unknown actual keeps the reservation as spent
    assert budget.reserve(0.40)


def test_an_svgs_author_is_priced_at_its_text_rates_or_makes_the_cost_unknown() -> None:
    from asyncimg import ImagesResponse, PriceTable

    table = PriceTable.from_json({
        "gpt-image-2.5-sunburst": {"text_input": 5.0, "image_output": 40.0},
        "gpt-5.5-mini": {"text_input": 1.0, "text_output": 4.0},
    })
    body = {
        "created": 1, "data": [{"b64_json": "AAAA"}],
        "usage": {"input_tokens": 100, "output_tokens": 1000, "total_tokens": 1100,
                  "input_tokens_details": {"text_tokens": 100, "image_tokens": 0},
                  "output_tokens_details": {"image_tokens": 1000, "text_tokens": 0}},
        "svg_usage": {"input_tokens": 1000, "output_tokens": 2000, "reasoning_tokens": 3000,
                      "model": "gpt-5.5-mini"},
    }
    response = ImagesResponse.from_json(body)
    image = (100 * 5.0 + 1000 * 40.0) / 1e6
    svg = (1000 * 1.0 + (2000 + 3000) * 4.0) / 1e6
    assert cost_of(response, "gpt-image-2.5-sunburst", table) == pytest.approx(image + svg)
    unpriced = ImagesResponse.from_json({**body, "svg_usage": {**body["svg_usage"],
                                                               "model": "someone-else"}})
    assert cost_of(unpriced, "gpt-image-2.5-sunburst", table) is None
