"""How far the estimate before sending is from the cost of what happened.

    .venv/bin/python benchmarks/cost_estimate.py [--quick]

For each GPT image model of the shipped price table, each size and each quality,
one generation against the emulator (in this process, on 127.0.0.1): the estimate
(:func:`asyncimg.estimate_request`, from the documented output tokens) against the
cost of the usage the emulator answered (:func:`asyncimg.cost_of`), as a relative
error. A model with no published token table is estimated "unknown" first; the row
then shows the error of the estimate learned from that one answer, for a second
request with the same parameters. ``--quick``: 1024x1024 and 1536x1024 only, low
and high only. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio

from asyncimg import AsyncImagesClient, cost_of, estimate_request, load_prices
from asyncimg._cost import Observed, request_key
from asyncimg.testing import Emulator

MODELS = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2")
SIZES = ("1024x1024", "1024x1536", "1536x1024")
QUALITIES = ("low", "medium", "high")
PROMPT = "a paper lantern floating over a dark lake, in watercolour"


async def main(quick: bool) -> None:
    prices = load_prices()
    sizes = ("1024x1024", "1536x1024") if quick else SIZES
    qualities = ("low", "high") if quick else QUALITIES
    print("| model | size | quality | estimate basis | estimate $ | actual $ | error |")
    print("|---|---|---|---|---:|---:|---:|")
    async with Emulator(api_key="sk-bench") as emu, AsyncImagesClient(
        api_key="sk-bench", base_url=emu.base_url, rate_limit=None
    ) as client:
        for model in MODELS:
            observed = Observed()
            for size in sizes:
                for quality in qualities:
                    params = {"model": model, "size": size, "quality": quality}
                    before = estimate_request(params, prompt=PROMPT, prices=prices)
                    response = await client.generate(PROMPT, **params)  # type: ignore[arg-type]
                    actual = cost_of(response, model, prices)
                    assert actual is not None, (model, size, quality)
                    guess = before
                    if before.usd is None:  # learned from this one answer
                        observed.add(request_key(params), actual)
                        again = await client.generate(PROMPT, **params)  # type: ignore[arg-type]
                        guess = estimate_request(params, prompt=PROMPT, prices=prices,
                                                 observed=observed)
                        actual = cost_of(again, model, prices)
                        assert actual is not None
                    assert guess.usd is not None
                    error = (guess.usd - actual) / actual
                    basis = guess.basis if before.usd is not None else "unknown, then learned"
                    print(f"| {model} | {size} | {quality} | {basis} | {guess.usd:.5f} | "
                          f"{actual:.5f} | {error:+.1%} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and qualities")
    asyncio.run(main(parser.parse_args().quick))
