"""``asyncimg batch --dry-run``: what a batch would send, how long the rate limit makes it
take, and what it would cost, with nothing sent.

The items are those a run would send (the input's items not done in the directory's
manifest); each is estimated by :func:`~asyncimg._cost.estimate_request`, learning
from the costs the manifest already records for the same parameters.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from .._cost import Observed, PriceTable, estimate_request, request_key
from .._limiter import RateLimit
from .input import Shard, TextLines, read_entries
from .manifest import manifest_paths, read_records
from .runner import estimate_eta

__all__ = ["BATCH_API_WINDOW", "Plan", "plan_batch"]

BATCH_API_WINDOW: Final = 24 * 3600.0
"""The Batch API's completion window: a batch finishes within it (often sooner)."""


@attrs.frozen
class Plan:
    """What a batch would do: its items, images, time and estimated cost.

    ``usd`` sums the items with a known estimate; ``unknown`` counts the others and
    ``why_unknown`` says why (the first reason). ``bases`` counts items by basis.
    ``seconds`` is what the rate limit implies (None without a rate), or the Batch
    API's window with ``batch_api``.
    """

    items: int
    done: int
    images: int
    seconds: float | None
    usd: float
    unknown: int
    bases: Mapping[str, int]
    why_unknown: str | None
    batch_api: bool

    def lines(self) -> list[str]:
        """The plan in words, a line each."""
        out = [
            "dry run: nothing was sent",
            f"items to run: {self.items}" + (f" ({self.done} already done)" if self.done else ""),
            f"images: {self.images}",
        ]
        if self.batch_api:
            out.append(f"time: within the Batch API's window of {self.seconds / 3600:g} h"
                       if self.seconds else "time: within the Batch API's window")
        elif self.seconds is None:
            out.append("time: unknown (no --rate)")
        else:
            out.append(f"time: at least {_duration(self.seconds)} at the rate limit")
        basis = ", ".join(f"{n} {name}" for name, n in sorted(self.bases.items()))
        price = " at the Batch API's half price" if self.batch_api else ""
        if self.items == 0:
            out.append("estimated cost: $0.00")
        elif self.unknown == self.items:
            out.append(f"estimated cost: unknown ({self.why_unknown})")
        else:
            more = f"; {self.unknown} unknown: {self.why_unknown}" if self.unknown else ""
            out.append(f"estimated cost: ${self.usd:.2f}{price} (basis: {basis}{more})")
        return out


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plan_batch(
    open_input: Callable[[], TextLines],
    fmt: str,
    directory: str | os.PathLike[str],
    *,
    params: Mapping[str, Any],
    prices: PriceTable,
    rate: RateLimit | None,
    batch_api: bool = False,
    shard: Shard | None = None,
) -> Plan:
    """Plan a batch without sending anything (blocking: it reads the input and manifest);
    with ``shard``, that shard's part of it.

    Raises:
        InputError: the input is unusable.
    """
    folder = Path(directory)
    observed = Observed()
    done: set[str] = set()
    if manifest_paths(folder):
        for record in read_records(folder):
            if record.ok:
                done.add(record.id)
                if record.cost_usd is not None:
                    observed.add(request_key(record.params), record.cost_usd)
    items = images = unknown = skipped = 0
    usd = 0.0
    bases: Counter[str] = Counter()
    why: str | None = None
    with open_input() as stream:
        for entry in read_entries(stream, fmt, params):
            if shard is not None and not shard.holds(entry.id):
                continue
            if entry.id in done:
                skipped += 1
                continue
            items += 1
            effective = {k: v for k, v in {**params, **entry.params}.items() if v is not None}
            images += int(effective.get("n") or 1)
            guess = estimate_request(effective, prompt=entry.prompt, prices=prices,
                                     observed=observed, batch_api=batch_api)
            bases[guess.basis] += 1
            if guess.usd is None:
                unknown += 1
                why = why or guess.note
            else:
                usd += guess.usd
    if batch_api:
        seconds: float | None = BATCH_API_WINDOW
    elif rate is None:
        seconds = None
    else:
        seconds = estimate_eta(images, rate=rate, available=rate.images, latency=0.0,
                               recent_per_second=None)
    return Plan(items=items, done=skipped, images=images, seconds=seconds, usd=usd,
                unknown=unknown, bases=dict(bases), why_unknown=why, batch_api=batch_api)
