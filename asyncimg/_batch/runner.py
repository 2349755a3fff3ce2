"""The direct runner behind ``asyncimg batch``: every item a request, its images on disk.

Exactly-once results, at-least-once requests:

* each input item has a stable id (:mod:`.input`);
* an item's images are written atomically (temporary file, fsync, rename) as
  ``{id}-{i}.{ext}`` *before* its manifest line is appended (:mod:`.manifest`);
  a line is the proof that the item is done, and a rerun skips done items. The
  items that finish while a group is being written make the next group: one
  thread hop writes its images, then its lines (one fsync for the lines);
* a batch stops early, sending nothing new, on a fatal error (a refused key,
  permission, an unknown model or URL, an exhausted quota), a local failure
  (a full disk), a line of input that does not decode, or a signal
  (:mod:`.control`); what is finished is written to the manifest first.

A kill between the images and the line costs one repeated request: the rerun
writes the same file names again.

Each run also appends one line to ``DIR/runs.jsonl`` when it ends (interrupted
or not): its start and end times, the configured rate, the time waited on the
limiter, its counts, and the sends of items stopped on their way
(``unfinished_sent``). With the manifest's send times (``sent``) that is what
``asyncimg report`` draws its rate chart from, and what a rerun's limiter starts
with (:meth:`asyncimg.Limiter.preload`): the images an earlier run sent in the
window still open count, so a rerun right after an interrupt keeps the rate.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .._callstats import CallStats
from .._cost import (
    Budget,
    Observed,
    PriceTable,
    cost_of,
    estimate_request,
    load_prices,
    request_key,
)
from .._exceptions import AsyncImgError, LimiterUnavailableError, ValidationError
from .._files import file_extension
from .._fs import safe_stem, write_files
from .._keywords import GENERATE_KEYWORDS
from .._limiter import LimiterStats, RateLimit
from .._offloop import blocking
from .._params import GenerateParams
from .._version import __version__
from .control import BatchControl, fatal_error
from .input import Entry, InputError, Shard, TextLines, read_entries
from .manifest import (
    Manifest,
    Record,
    append_run,
    error_fields,
    read_records,
    sent_json,
    usage_fields,
)
from .many import BatchIterator, effective_params, make_item

if TYPE_CHECKING:
    from .._client import AsyncImagesClient

__all__ = [
    "BatchSummary",
    "ProgressSink",
    "append_run_line",
    "check_batch_params",
    "directory_costs",
    "estimate_eta",
    "images_per_minute",
    "public_url",
    "run_batch",
]

# Per-call settings that generate() takes but are not request parameters.
_GROUP = 256
"""The most items written together: their images, then their manifest lines (one fsync)."""
_CALL_SETTINGS = frozenset({"timeout", "max_retries", "extra_body"})


def check_batch_params(client: AsyncImagesClient, params: Mapping[str, Any]) -> None:
    """Check a batch's own parameters as one request would be checked, and against the limiter.

    Raises:
        ValidationError: ``params`` break the model's rules, or one item's images
            exceed the limiter's whole budget (``param`` names the parameter).
    """
    for key in params:
        if key not in GENERATE_KEYWORDS:
            raise ValidationError(key, f"generate() takes no parameter {key!r}")
    request = {k: v for k, v in params.items() if k not in _CALL_SETTINGS}
    request.setdefault("model", client.model)
    built = GenerateParams.build(prompt="(each prompt of the batch)", **request)
    rate = getattr(client.limiter, "rate", None)
    budget = getattr(rate, "images", None)
    if isinstance(budget, int) and built.images > budget:
        raise ValidationError(
            "n",
            f"n={built.images} exceeds the rate limit of {budget} images per "
            f"{getattr(rate, 'per', 0):g}s; no item could ever be sent",
        )


def estimate_eta(
    remaining_images: float,
    *,
    rate: RateLimit | None,
    available: int | None,
    latency: float,
    recent_per_second: float | None,
) -> float | None:
    """Seconds until ``remaining_images`` more are done; None when nothing is known yet.

    The larger of two bounds: what the limiter allows (the images beyond what it
    can grant now come back at ``images`` per ``per + margin``, then one
    request's ``latency``), and the recent pace (``recent_per_second``).
    """
    if remaining_images <= 0:
        return 0.0
    bounds = []
    if rate is not None:
        beyond = max(0.0, remaining_images - (available or 0))
        bounds.append(beyond * rate.window / rate.images + latency)
    if recent_per_second:
        bounds.append(remaining_images / recent_per_second)
    return max(bounds) if bounds else None


def images_per_minute(images: int, seconds: float, rate: tuple[int, float] | None) -> float:
    """Images per minute over ``seconds``: the one definition of the CLI and the report.

    With a rate ``(images, per)`` it is measured over at least one window and never
    reads as more than the limit: a sliding window lets a full budget go at once,
    so a short run's raw figure would exceed the sustained rate. 0 for no time.
    """
    span = max(seconds, rate[1]) if rate is not None else seconds
    value = images * 60.0 / span if span > 0 else 0.0
    return value if rate is None else min(value, rate[0] * 60.0 / rate[1])


# -- running a batch --------------------------------------------------------------------


@attrs.define
class BatchSummary:
    """What a run did.

    ``stopped`` and ``stop_message`` say why it ended early (see :class:`BatchControl`);
    ``failed_earlier`` counts failed items of earlier runs kept (not retried).
    """

    total: int | None
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    images: int = 0
    started: float = attrs.field(factory=time.monotonic)
    elapsed: float = 0.0
    waited: float = 0.0
    rate_limited: int = 0
    failures: list[Record] = attrs.field(factory=list)
    max_failures_kept: int = 50
    failed_earlier: int = 0
    stopped: str | None = None
    stop_message: str | None = None
    rate: RateLimit | None = None
    available: int | None = None
    images_per_item: int = 1
    busy_seconds: float = 0.0
    recent: deque[tuple[float, int]] = attrs.field(factory=deque, repr=False)
    tokens: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(("input", "output",
                                                                           "total"), 0))
    """Usage tokens the server reported for the images saved (input, output, total)."""
    cost: float = 0.0
    """What the items of this run cost, in USD (those with a known cost)."""
    cost_unknown: int = 0
    """Items of this run done whose cost is unknown (no usage, or no price for the model)."""
    batch: Any = None
    """The Batch API route: what the last poll of the current batch said."""
    route: str = "direct"
    """``"direct"`` (:func:`run_batch`) or ``"batch-api"``: which figures mean something."""

    @property
    def done(self) -> int:
        """Items finished in this run (ok or failed)."""
        return self.ok + self.failed

    @property
    def window(self) -> float:
        """The span images/min is measured over: the rate's ``per``, else a minute."""
        return self.rate.per if self.rate is not None else 60.0

    def count(self, record: Record) -> None:
        """Add a finished item."""
        self.rate_limited += record.rate_limited
        if record.ok:
            self.ok += 1
            self.images += len(record.files)
            self.count_cost(record)
            self.recent.append((time.monotonic(), len(record.files)))
        else:
            self.failed += 1
            if len(self.failures) < self.max_failures_kept:
                self.failures.append(record)
        self.busy_seconds += record.seconds

    def count_cost(self, record: Record) -> None:
        """Add a done item's cost (or count it as unknown)."""
        if record.cost_usd is None:
            self.cost_unknown += 1
        else:
            self.cost += record.cost_usd

    def _recent_images(self, now: float) -> int:
        while self.recent and self.recent[0][0] <= now - self.window:
            self.recent.popleft()
        return sum(n for _t, n in self.recent)

    @property
    def images_per_minute(self) -> float:
        """Images saved per minute: over the last window while running, else over the run
        (:func:`images_per_minute`, the report's figure too)."""
        rate = None if self.rate is None else (self.rate.images, self.rate.per)
        if self.elapsed:
            return images_per_minute(self.images, self.elapsed, rate)
        now = time.monotonic()
        span = self.window if self.rate is not None else min(now - self.started, 60.0)
        return images_per_minute(self._recent_images(now), span, rate)

    @property
    def eta(self) -> float | None:
        """Seconds left (see :func:`estimate_eta`); None while unknown."""
        if self.total is None:
            return None
        now = time.monotonic()
        per_item = self.images / self.ok if self.ok else self.images_per_item
        span = min(now - self.started, self.window)
        recent = self._recent_images(now) / span if span > 0 and self.recent else None
        return estimate_eta(
            max(0, self.total - self.done) * per_item,
            rate=self.rate,
            available=self.available,
            latency=self.busy_seconds / self.done if self.done else 0.0,
            recent_per_second=recent,
        )


class ProgressSink:
    """Receives the progress of a run; the default does nothing."""

    def start(self, summary: BatchSummary) -> None:
        """The run begins (``summary.total`` is the number of items to run, if known)."""

    def item(self, record: Record, summary: BatchSummary) -> None:
        """An item finished (already counted in ``summary``)."""

    def tick(self, summary: BatchSummary) -> None:
        """About once a second, even when nothing finished."""

    def stop(self, summary: BatchSummary) -> None:
        """The run ended (or was interrupted)."""


def _skip_done(
    entries: Iterator[Entry], done: AbstractSet[str], summary: BatchSummary, *, count: bool
) -> Iterator[Entry]:
    for entry in entries:
        if entry.id in done:
            summary.skipped += count
            continue
        yield entry


def _in_shard(entries: Iterator[Entry], shard: Shard | None) -> Iterator[Entry]:
    return entries if shard is None else (e for e in entries if shard.holds(e.id))


def _observe(summary: BatchSummary, client: AsyncImagesClient) -> None:
    stats = client.limiter.stats()
    summary.waited = stats.waited
    summary.available = stats.available


async def run_batch(
    client: AsyncImagesClient,
    open_input: Callable[[], TextLines],
    fmt: str,
    directory: str | os.PathLike[str],
    *,
    params: Mapping[str, Any] | None = None,
    retry_failed: bool = True,
    count_first: bool = True,
    progress: ProgressSink | None = None,
    server: str | None = None,
    control: BatchControl | None = None,
    prices: PriceTable | None = None,
    budget: Budget | None = None,
    shard: Shard | None = None,
) -> BatchSummary:
    """Run every not-yet-done item of the input into ``directory`` (see the module doc).

    Args:
        client: the client; its limiter's ``stats()`` give the time waited and the ETA.
        open_input: opens the input (called twice when ``count_first``).
        fmt: ``txt``, ``jsonl`` or ``csv``.
        directory: where the images and ``manifest.jsonl`` go.
        params: parameters for every item (an item's own override them).
        retry_failed: run the items whose last line says failed again.
        count_first: read the input once first to count what is left (a file, not stdin).
        progress: told about every finished item.
        server: what the directory remembers as its server (default: the base url).
        control: stops the run early (one is made when not given); its ``reason``
            is also the summary's ``stopped``.
        prices: what each item's manifest line is priced with (default: the shipped table).
        budget: a spending limit: what the directory's earlier runs cost counts
            against it, each request's estimate is reserved before it is sent and
            settled with its actual cost; when the next one would not fit the run
            stops with ``"budget"`` (what is in flight finishes).
        shard: run only this shard's items (by item id), writing the shard's own
            manifest and runs line in ``directory`` (see :class:`Shard`).

    Raises:
        ValidationError: ``params`` break the rules (see :func:`check_batch_params`),
            or a ``budget`` cannot be kept because the cost of a request is unknown
            (``param`` is ``max_cost``); nothing was sent.
        InputError: the input is unusable (a line of a file does not decode), another
            run holds the directory, or another server filled it.
        OSError: the directory cannot be written.
    """
    params = dict(params or {})
    check_batch_params(client, params)
    allowed = GENERATE_KEYWORDS
    folder = Path(directory)
    sink = progress or ProgressSink()
    control = control or BatchControl()
    rate = getattr(client.limiter, "rate", None)
    preload = getattr(client.limiter, "preload", None)  # a shared limiter keeps its own window
    manifest = Manifest(
        folder, retry_failed=retry_failed, server=server or public_url(client.base_url),
        shard=shard,
        sends_since=time.time() - rate.window
        if isinstance(rate, RateLimit) and callable(preload) else None,
    )
    try:
        await blocking(manifest.open)
        if manifest.recent_sends and callable(preload):
            now = time.time()
            preload([(max(0.0, now - at), images) for at, images in manifest.recent_sends])
        # The client's default model changes the images: it is in every id too.
        effective = {"model": client.model, **params} if client.model else params
        table = prices if prices is not None else await blocking(load_prices)
        if budget is not None:
            spent, observed = await blocking(directory_costs, folder)
            budget.spent += spent
            budget.observed.costs.update(observed.costs)
            first = estimate_request(effective, prices=table, observed=budget.observed)
            if first.usd is None:
                raise ValidationError("max_cost", f"cannot keep a budget: {first.note}")
        total: int | None = None
        skipped = 0
        if count_first:

            def count() -> tuple[int, int]:
                with open_input() as stream:
                    ids = [e.id for e in _in_shard(read_entries(stream, fmt, effective), shard)]
                done = sum(1 for i in ids if i in manifest.done)
                return len(ids) - done, done

            total, skipped = await blocking(count)
        summary = BatchSummary(
            total=total,
            skipped=skipped,
            failed_earlier=0 if retry_failed else manifest.failed_kept,
            rate=getattr(client.limiter, "rate", None),
            images_per_item=params.get("n") or 1,
        )
        wall_start = time.time()
        before = client.limiter.stats()
        unfinished: list[tuple[float, int]] = []
        stream = open_input()
        try:
            entries = _skip_done(
                _in_shard(read_entries(stream, fmt, effective), shard), manifest.done, summary,
                count=not count_first,
            )

            async def work(index: int, entry: Entry) -> _Finished | None:
                calls: list[CallStats] = []

                def call(stats: CallStats) -> Awaitable[_Finished | None]:
                    calls.append(stats)
                    return _budgeted(
                        budget, table, entry, effective, stats, control,
                        lambda: _run_entry(
                            client, entry, effective, allowed, folder, stats, control, table
                        ),
                    )

                record = await control.run(call)
                if record is None and calls:  # stopped on its way: its sends still count
                    unfinished.extend(calls[0].sent)
                return record

            _observe(summary, client)
            sink.start(summary)
            batch = BatchIterator(
                control.pull(entries, bad_input=InputError), work,
                concurrency=client.max_in_flight, ready=client.max_results_held,
            )
            # Finished items go to a writer that writes what gathered while it last wrote,
            # in one group: the images, then the manifest lines (one thread hop per group).
            send, receive = anyio.create_memory_object_stream[_Finished](
                max(1, client.max_in_flight))

            async def writer() -> None:
                async with receive:
                    async for first in receive:
                        group = [first]
                        with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
                            while len(group) < _GROUP:
                                group.append(receive.receive_nowait())
                        if control.reason == "aborted":
                            continue
                        failure = await blocking(_write_group, manifest, folder, group)
                        if failure is not None:
                            control.stop("aborted", failure[0], cancel_sent=failure[1])
                            continue
                        _observe(summary, client)
                        for item in group:
                            summary.count(item.record)
                            sink.item(item.record, summary)

            async with batch, anyio.create_task_group() as tg:

                async def ticker() -> None:
                    while True:
                        await anyio.sleep(1.0)
                        _observe(summary, client)
                        sink.tick(summary)

                tg.start_soon(ticker)
                async with anyio.create_task_group() as writing:
                    writing.start_soon(writer)
                    async with send:
                        async for finished in batch:
                            if finished is not None and control.reason != "aborted":
                                await send.send(finished)
                tg.cancel_scope.cancel()
        finally:
            stream.close()
            summary.elapsed = time.monotonic() - summary.started
            summary.stopped, summary.stop_message = control.reason, control.message
            with contextlib.suppress(OSError):  # a full disk: the summary still comes
                append_run_line(
                    folder, client, params, summary, wall_start, before, unfinished, shard=shard
                )
            sink.stop(summary)
        return summary
    finally:
        manifest.close()


@attrs.frozen
class _Finished:
    """A finished item on its way to the writer: its manifest line, and the bytes of the
    images it names (``record.files``, in order; none for a failed item)."""

    record: Record
    images: tuple[bytes, ...] = ()


def _write_group(
    manifest: Manifest, folder: Path, group: list[_Finished]
) -> tuple[str, bool] | None:
    """Write a group's images (made durable first), then its manifest lines (one fsync):
    a line is never on disk before its images. On a failure, ``(message, cancel the
    requests sent)``, and none of the group's lines is written."""
    try:
        write_files(folder, [file for item in group
                             for file in zip(item.record.files, item.images, strict=True)])
    except OSError as exc:
        return f"cannot write images to {folder}: {exc}", False
    try:
        manifest.append_many(item.record for item in group)
    except OSError as exc:
        return f"cannot write {manifest.path}: {exc}", True
    return None


def directory_costs(directory: Path) -> tuple[float, Observed]:
    """What the done items of ``directory``'s manifest cost (USD), and by request parameters.

    Raises:
        InputError: there is no manifest.
    """
    spent = 0.0
    observed = Observed()
    for record in read_records(directory):
        if record.ok and record.cost_usd is not None:
            spent += record.cost_usd
            observed.add(request_key(record.params), record.cost_usd)
    return spent, observed


async def _budgeted(
    budget: Budget | None,
    table: PriceTable,
    entry: Entry,
    params: Mapping[str, Any],
    stats: CallStats,
    control: BatchControl,
    run: Callable[[], Awaitable[_Finished | None]],
) -> _Finished | None:
    """``run()`` the item within ``budget``: reserve its estimate first, settle after.

    A request never sent gives its reservation back; one sent whose cost is unknown
    (no answer, or no usage) counts as its reservation; one the server refused with
    a status costs nothing.
    """
    if budget is None or entry.problem is not None:
        return await run()
    effective = {k: v for k, v in {**params, **entry.params}.items() if v is not None}
    key = request_key(effective)
    guess = estimate_request(effective, prompt=entry.prompt, prices=table,
                             observed=budget.observed)
    if guess.usd is None:
        control.stop("budget", f"cannot keep the budget: {guess.note} (line {entry.line})")
        return None
    hold = budget.reservation(key, guess.usd)
    if not budget.reserve(hold):
        control.stop("budget", budget.over(hold))
        return None
    finished: _Finished | None = None
    try:
        finished = await run()
    finally:
        record = None if finished is None else finished.record
        budget.finish(
            hold, key, sent=bool(stats.attempts),
            refused=record is not None and not record.ok and bool((record.error or {}).get(
                "status")),
            actual=record.cost_usd if record is not None and record.ok else None,
        )
    return finished


def public_url(url: str) -> str:
    """``url`` without credentials or a query: what may be written to disk."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def append_run_line(
    folder: Path,
    client: AsyncImagesClient,
    params: Mapping[str, Any],
    summary: BatchSummary,
    wall_start: float,
    before: LimiterStats,
    unfinished: list[tuple[float, int]],
    *,
    shard: Shard | None = None,
) -> None:
    """Append this run's line to ``runs.jsonl`` (a shard's own: ``runs-KofN.jsonl``; a few
    hundred bytes, once: on the loop).

    The Batch API route's line has no rate (the API sets the pace) and says its route.

    Raises:
        OSError: the file cannot be written.
    """
    after = client.limiter.stats()
    rate = getattr(client.limiter, "rate", None) if summary.route == "direct" else None
    line = {
        "route": summary.route,
        "started_at": round(wall_start, 3),
        "finished_at": round(time.time(), 3),
        "seconds": round(summary.elapsed, 3),
        "rate": None if not isinstance(rate, RateLimit) else {
            "images": rate.images, "per": rate.per, "margin": rate.margin, "burst": rate.burst,
        },
        "concurrency": client.max_concurrency,
        "params": dict(params),
        "total": summary.total,
        "ok": summary.ok,
        "failed": summary.failed,
        "skipped": summary.skipped,
        "images": summary.images,
        "waited": round(after.waited - before.waited, 3),
        "pauses": after.pauses - before.pauses,
        "rate_limited": summary.rate_limited,
        "unfinished_sent": sent_json(unfinished),
        "version": __version__,
    }
    if shard is not None:
        line["shard"] = shard.name
    append_run(folder, line, shard)


async def _run_entry(
    client: AsyncImagesClient,
    entry: Entry,
    params: Mapping[str, Any],
    allowed: frozenset[str],
    folder: Path,
    stats: CallStats,
    control: BatchControl,
    prices: PriceTable,
) -> _Finished | None:
    effective = dict(effective_params(client.model, params, entry.params))

    def record(data: tuple[bytes, ...] = (), **fields: Any) -> _Finished:
        return _Finished(Record(
            entry.id, entry.line, entry.prompt, effective,
            sent=tuple(stats.sent), rate_limited=stats.rate_limited, **fields,
        ), data)

    if entry.problem is not None:
        return record(
            status="failed",
            error={"type": "InputError", "code": None, "status": None, "param": None,
                   "message": entry.problem},
            attempts=0,
        )
    started = time.monotonic()
    item = await make_item(
        client, 0, {"prompt": entry.prompt, **entry.params}, params, allowed, stats
    )
    control.finished(item.error)
    if item.response is None:
        assert item.error is not None
        if isinstance(item.error, LimiterUnavailableError):
            # Not the item's failure: nothing was sent. The run stops; a rerun runs it.
            control.stop("fatal", fatal_error(item.error) or str(item.error))
            return None
        fatal = fatal_error(item.error)
        if fatal is not None:  # at once, before this item's slot goes to the next one
            control.stop("fatal", fatal)
        return record(
            status="failed", error=error_fields(item.error),
            request_id=getattr(item.error, "request_id", None),
            attempts=item.attempts, seconds=item.seconds,
        )
    response = item.response
    if not response.data:
        return record(
            status="failed",
            error={"type": "EmptyResult", "code": None, "status": None, "param": None,
                   "message": "the server answered with no images (\"data\": [])"},
            request_id=response.request_id, attempts=item.attempts, seconds=item.seconds,
        )
    try:  # decoded here, written with the group the item's manifest line goes in
        images = tuple([await client.download(image) for image in response.data])
    except AsyncImgError as exc:
        return record(
            status="failed", error=error_fields(exc), request_id=response.request_id,
            attempts=item.attempts, seconds=time.monotonic() - started,
        )
    stem = safe_stem(entry.id)
    revised = next((i.revised_prompt for i in response.data if i.revised_prompt), None)
    return record(
        images,
        status="ok",
        files=tuple(f"{stem}-{i}.{file_extension(data)}" for i, data in enumerate(images)),
        images=len(images),
        request_id=response.request_id,
        revised_prompt=revised,
        attempts=item.attempts,
        seconds=time.monotonic() - started,
        usage=None if response.usage is None else usage_fields(response.usage),
        cost_usd=cost_of(response.usage, effective.get("model"), prices),
    )
