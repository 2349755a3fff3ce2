"""What a call costs, what it will cost, and a budget it never crosses (all pure, no I/O but
reading a prices file).

* Prices are data: ``prices.json`` ships with the package (USD per 1M tokens per model
  family, the day they were taken, and the output tokens of one image by size and
  quality where OpenAI publishes them); a user's file overrides it field by field
  (:func:`load_prices`). A dated snapshot takes its family's prices
  (``gpt-image-1.5-2025-12-16`` -> ``gpt-image-1.5``). A model or rate missing from the
  table is an unknown cost (None), never a guess.
* :func:`cost_of` prices a response's ``usage``; the Batch API halves it.
* :func:`estimate_request` says what a request will cost before it is sent: from the
  documented output tokens, else from what the same parameters cost before
  (:class:`Observed`), else unknown, and says which (``basis``).
* :class:`Budget` reserves each request's estimate before it is sent and settles it with
  the actual cost when the answer comes.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from ._models import ImagesResponse, Usage
from ._stream import CompletedImageEvent

__all__ = [
    "BATCH_API_DISCOUNT",
    "PARTIAL_IMAGE_TOKENS",
    "PRICE_FIELDS",
    "Budget",
    "Estimate",
    "ModelPrices",
    "Observed",
    "PriceTable",
    "cost_of",
    "estimate_request",
    "load_prices",
    "request_key",
]

PRICE_FIELDS: Final = (
    "text_input",
    "cached_text_input",
    "image_input",
    "cached_image_input",
    "image_output",
    "text_output",
)
BATCH_API_DISCOUNT: Final = 0.5
"""What the Batch API charges, as a fraction of the direct price."""
PARTIAL_IMAGE_TOKENS: Final = 100
"""The image output tokens a streamed partial image adds (OpenAI's image generation guide)."""
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_MILLION = 1_000_000.0


@attrs.frozen
class ModelPrices:
    """One model family's prices: USD per 1M tokens (None: not known), and the output
    tokens of one image by ``(size, quality)`` where they are published."""

    text_input: float | None = None
    cached_text_input: float | None = None
    image_input: float | None = None
    cached_image_input: float | None = None
    image_output: float | None = None
    text_output: float | None = None
    image_output_tokens: Mapping[tuple[str, str], int] = attrs.field(factory=dict)
    taken: str | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], *, where: str = "prices") -> ModelPrices:
        """Build from one model's JSON object.

        Raises:
            ValueError: a price is not a non-negative number, or the token table is odd.
        """
        fields: dict[str, Any] = {}
        for name in PRICE_FIELDS:
            value = obj.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{where}.{name}: {value!r} is not a price (USD per 1M tokens)")
            fields[name] = float(value)
        tokens: dict[tuple[str, str], int] = {}
        table = obj.get("image_output_tokens") or {}
        if not isinstance(table, Mapping):
            raise ValueError(f"{where}.image_output_tokens: not an object of sizes")
        for size, by_quality in table.items():
            if not isinstance(by_quality, Mapping):
                raise ValueError(f"{where}.image_output_tokens.{size}: not an object of qualities")
            for quality, count in by_quality.items():
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    raise ValueError(f"{where}.image_output_tokens.{size}.{quality}: {count!r}")
                tokens[(str(size), str(quality))] = count
        taken = obj.get("taken")
        return cls(
            **fields, image_output_tokens=tokens, taken=taken if isinstance(taken, str) else None
        )

    def merged(self, other: ModelPrices) -> ModelPrices:
        """These prices with ``other``'s known fields (and token counts) taking precedence."""
        known = {n: getattr(other, n) for n in PRICE_FIELDS if getattr(other, n) is not None}
        return attrs.evolve(
            self,
            **known,
            image_output_tokens={**self.image_output_tokens, **other.image_output_tokens},
            taken=other.taken or self.taken,
        )


@attrs.frozen
class PriceTable:
    """Prices by model family (see :func:`load_prices`)."""

    models: Mapping[str, ModelPrices] = attrs.field(factory=dict)

    @classmethod
    def from_json(cls, obj: Any, *, where: str = "prices") -> PriceTable:
        """Build from a decoded prices file: ``{"model": {"text_input": 5.0, ...}}``
        (keys starting with ``_`` are comments).

        Raises:
            ValueError: it is not an object of models, or a price is odd.
        """
        if not isinstance(obj, Mapping):
            raise ValueError(f"{where}: a prices file is a JSON object of models")
        models = {}
        for name, entry in obj.items():
            if str(name).startswith("_"):
                continue
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where}: {name!r} is not an object of prices")
            models[str(name)] = ModelPrices.from_json(entry, where=f"{where}: {name}")
        return cls(models)

    def merged(self, other: PriceTable) -> PriceTable:
        """This table overridden by ``other``, model by model and field by field."""
        models = dict(self.models)
        for name, prices in other.models.items():
            models[name] = models[name].merged(prices) if name in models else prices
        return PriceTable(models)

    def family(self, model: str | None) -> str | None:
        """The table's name for ``model``: itself, or its family for a dated snapshot."""
        if model is None:
            return None
        if model in self.models:
            return model
        base = _SNAPSHOT.sub("", model)
        return base if base in self.models else None

    def get(self, model: str | None) -> ModelPrices | None:
        """``model``'s prices (a dated snapshot's family's); None when unknown."""
        family = self.family(model)
        return None if family is None else self.models[family]


def load_prices(path: str | os.PathLike[str] | None = None) -> PriceTable:
    """The shipped price table, overridden by the JSON file at ``path`` if given.

    Raises:
        OSError: ``path`` cannot be read.
        ValueError: a file is not JSON or not shaped like a prices file.
    """
    from importlib import resources  # on first use: `import asyncimg` stays light

    shipped = resources.files("asyncimg").joinpath("prices.json").read_text(encoding="utf-8")
    table = PriceTable.from_json(json.loads(shipped), where="prices.json")
    if path is None:
        return table
    with open(path, encoding="utf-8") as f:
        try:
            obj = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: not JSON ({exc})") from None
    return table.merged(PriceTable.from_json(obj, where=os.fspath(path)))


def _part(tokens: int, price: float | None) -> float | None:
    if tokens <= 0:
        return 0.0
    return None if price is None else tokens * price / _MILLION


def _count(obj: Any, name: str) -> int:
    """``obj[name]`` when ``obj`` is a JSON object and that is an integer; else 0."""
    value = obj.get(name) if isinstance(obj, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def cost_of(
    usage: Usage | ImagesResponse | CompletedImageEvent | None,
    model: str | None,
    prices: PriceTable | None = None,
    *,
    batch_api: bool = False,
) -> float | None:
    """The USD cost of one call from its ``usage`` (a response's, or a stream's completed
    event's), or None when unknown.

    Input tokens are split by ``input_tokens_details`` into text and image tokens
    (without details, all are priced as text), cached ones (``cached_tokens_details``,
    where the server sends it) at the cached rates; output tokens by
    ``output_tokens_details`` into image and text tokens (without details, all are
    image tokens). ``batch_api`` applies the Batch API's half price. A streamed call costs
    what its completed event's usage says: the partial images' extra output tokens are
    in it as the server counts them (:func:`estimate_request` adds them before sending).
    An SVG response's ``svg_usage`` adds its author model's text rates (input, and
    output with reasoning tokens); an author the table does not price makes the whole
    cost unknown.

    Args:
        usage: the call's usage, its :class:`ImagesResponse`, or a stream's
            :class:`CompletedImageEvent`.
        model: the model the call named (a dated snapshot takes its family's prices).
        prices: the table (default: the shipped one, :func:`load_prices`).
        batch_api: the call went through OpenAI's Batch API.

    Returns:
        None when there is no usage, the model has no prices, or a rate its tokens need
        is missing.
    """
    svg = usage.svg_usage if isinstance(usage, ImagesResponse) else None
    if isinstance(usage, (ImagesResponse, CompletedImageEvent)):
        usage = usage.usage
    if usage is None:
        return None
    table = load_prices() if prices is None else prices
    svg_cost = 0.0
    if svg is not None:  # the SVG's author is a text model, priced as such (or unknown)
        author = table.get(svg.model)
        reasoning = svg.reasoning_tokens or 0
        svg_parts = (
            None if author is None else _part(svg.input_tokens or 0, author.text_input),
            None if author is None else _part(
                (svg.output_tokens or 0) + reasoning, author.text_output
            ),
        )
        if any(p is None for p in svg_parts):
            return None
        svg_cost = sum(p for p in svg_parts if p is not None)
    rates = table.get(model)
    if rates is None:
        return None
    inp, out = usage.input_tokens_details, usage.output_tokens_details
    input_total = usage.input_tokens or 0
    if inp is None:
        text_in, image_in = input_total, 0
    else:
        text_in, image_in = inp.text_tokens or 0, inp.image_tokens or 0
    cached = inp.extra.get("cached_tokens_details") if inp is not None else None
    cached_text = min(text_in, _count(cached, "text_tokens"))
    cached_image = min(image_in, _count(cached, "image_tokens"))
    output_total = usage.output_tokens or 0
    if out is None:
        image_out, text_out = output_total, 0
    else:
        image_out, text_out = out.image_tokens or 0, out.text_tokens or 0
    parts = (
        _part(text_in - cached_text, rates.text_input),
        _part(cached_text, rates.cached_text_input),
        _part(image_in - cached_image, rates.image_input),
        _part(cached_image, rates.cached_image_input),
        _part(image_out, rates.image_output),
        _part(text_out, rates.text_output),
    )
    if any(p is None for p in parts):
        return None
    total = sum(p for p in parts if p is not None) + svg_cost
    return total * BATCH_API_DISCOUNT if batch_api else total


RequestKey = tuple[str, str, str, int, int]


def request_key(params: Mapping[str, Any]) -> RequestKey:
    """What makes two requests cost the same: model, size, quality, n, partial images."""
    return (
        str(params.get("model") or ""),
        str(params.get("size") or "auto"),
        str(params.get("quality") or "auto"),
        int(params.get("n") or 1),
        int(params.get("partial_images") or 0),
    )


@attrs.define
class Observed:
    """What requests actually cost, by :func:`request_key`: a count, a sum and the largest."""

    costs: dict[RequestKey, tuple[int, float, float]] = attrs.field(factory=dict)

    def add(self, key: RequestKey, cost: float) -> None:
        """Record one request's actual cost."""
        count, total, top = self.costs.get(key, (0, 0.0, 0.0))
        self.costs[key] = (count + 1, total + cost, max(top, cost))

    def count(self, key: RequestKey) -> int:
        """How many requests of ``key`` were seen."""
        return self.costs.get(key, (0, 0.0, 0.0))[0]

    def mean(self, key: RequestKey) -> float | None:
        """Their average cost; None when none was seen."""
        count, total, _ = self.costs.get(key, (0, 0.0, 0.0))
        return total / count if count else None

    def largest(self, key: RequestKey) -> float | None:
        """The most one of them cost; None when none was seen."""
        count, _, top = self.costs.get(key, (0, 0.0, 0.0))
        return top if count else None


@attrs.frozen
class Estimate:
    """What a request will cost: ``usd`` (None: unknown) and ``basis``, how it was reached
    (``"documented"``, ``"learned"`` or ``"unknown"``), with ``note`` saying more."""

    usd: float | None
    basis: str
    note: str = ""


def estimate_request(
    params: Mapping[str, Any],
    *,
    prompt: str = "",
    input_images: int = 0,
    prices: PriceTable | None = None,
    observed: Observed | None = None,
    batch_api: bool = False,
) -> Estimate:
    """What one request with ``params`` (model, size, quality, n, partial_images) will cost.

    Documented: the model's published output tokens for the size and quality (the
    largest of its sizes for ``auto``, the highest quality for ``auto``: an upper
    bound), plus the prompt at about four characters a token, plus
    :data:`PARTIAL_IMAGE_TOKENS` per partial image, times ``n``. Input images have no
    published count: with them, or with a size or model the table does not cover, the
    estimate is learned from ``observed`` (the mean of the same parameters), else unknown.
    """
    table = load_prices() if prices is None else prices
    key = request_key(params)
    model, size, quality, n, partials = key
    rates = table.get(model or None)
    factor = BATCH_API_DISCOUNT if batch_api else 1.0
    documented = None
    if rates is not None and rates.image_output is not None and not input_images:
        documented = _documented_tokens(rates, size, quality)
    if documented is not None and rates is not None:
        text = math.ceil(len(prompt) / 4) if prompt else 0
        text_cost = _part(text, rates.text_input)
        if text_cost is not None:
            out = (documented + PARTIAL_IMAGE_TOKENS * partials) * n
            usd = (text_cost + out * (rates.image_output or 0.0) / _MILLION) * factor
            upper = " (upper bound for auto)" if "auto" in (size, quality) else ""
            return Estimate(usd, "documented", f"{documented} output tokens an image{upper}")
    learned = observed.mean(key) if observed is not None else None
    if learned is not None and observed is not None:
        return Estimate(learned, "learned", f"mean of {observed.count(key)} earlier requests")
    if rates is None:
        why = f"no prices for model {model or '(the server default)'}"
    elif input_images:
        why = "input images have no published token count, and none were seen yet"
    else:
        why = f"no published tokens for {size} {quality}, and none were seen yet"
    return Estimate(None, "unknown", why)


def _documented_tokens(rates: ModelPrices, size: str, quality: str) -> int | None:
    table = rates.image_output_tokens
    sizes = {s for s, _ in table} if size == "auto" else {size}
    qualities = {q for _, q in table} if quality == "auto" else {quality}
    found = [table.get((s, q)) for s in sizes for q in qualities]
    if not found or any(f is None for f in found):
        return None
    return max(f for f in found if f is not None)


@attrs.define
class Budget:
    """A spending limit in USD: reserve before sending, settle when the answer comes.

    ``spent`` is what settled requests cost (and what was spent before, when a rerun
    starts from a directory's manifest); ``reserved`` what requests in flight may cost.
    Nothing is reserved that would take ``spent + reserved`` over ``limit``. A reservation
    is the larger of the request's estimate and the most the same parameters have cost.
    """

    limit: float
    spent: float = 0.0
    reserved: float = 0.0
    observed: Observed = attrs.field(factory=Observed)

    @property
    def remaining(self) -> float:
        """What is left to spend (not counting reservations)."""
        return max(0.0, self.limit - self.spent)

    def reservation(self, key: RequestKey, estimate: float) -> float:
        """What to reserve for a request of ``key`` estimated at ``estimate``."""
        return max(estimate, self.observed.largest(key) or 0.0)

    def reserve(self, amount: float) -> bool:
        """Reserve ``amount``; False (nothing reserved) when it would go over the limit."""
        if self.spent + self.reserved + amount > self.limit * (1 + 1e-9):
            return False
        self.reserved += amount
        return True

    def release(self, amount: float) -> None:
        """Give back a reservation whose request was never sent."""
        self.reserved = max(0.0, self.reserved - amount)

    def settle(self, amount: float, key: RequestKey, actual: float | None) -> None:
        """Replace a reservation with what the request cost (the reservation, if unknown)."""
        self.release(amount)
        self.spent += amount if actual is None else actual
        if actual is not None:
            self.observed.add(key, actual)

    def finish(
        self, amount: float, key: RequestKey, *, sent: bool, refused: bool, actual: float | None
    ) -> None:
        """Close a request's reservation: given back if it was never ``sent``, nothing spent
        if the server ``refused`` it with a status, else settled with ``actual`` (the
        reservation when unknown: no answer, or no usage)."""
        if not sent:
            self.release(amount)
        else:
            self.settle(amount, key, 0.0 if refused and actual is None else actual)

    def over(self, amount: float) -> str:
        """Why a request of ``amount`` is not sent: the limit, the spend, what remains."""
        return (
            f"the budget of ${self.limit:.2f} is reached: ${self.spent:.4f} spent, "
            f"${self.remaining:.4f} remains, and the next request may cost ${amount:.4f}"
        )
