"""The batch runner behind ``asyncimg batch``: input files, images on disk, the manifest.

Exactly-once results, at-least-once requests:

* each input item has a stable id: a hash of its prompt and its effective
  parameters (plus ``-2``, ``-3``... for repeats of the same item), so editing
  or inserting other lines does not change it;
* an item's images are written atomically (temporary file, fsync, rename) as
  ``{id}-{i}.{ext}`` *before* its manifest line is appended (write, flush,
  fsync); a line is the proof that the item is done;
* at start the manifest is read: a torn last line is dropped, the latest line of
  an id wins, a done line counts only if its files exist; lines of items that
  will run again (failed ones, when failed items are retried) are dropped, and
  the manifest is rewritten atomically if anything was dropped. So every id has
  at most one line, whenever the process is killed;
* stale temporary files of our own images (``.{id}-{i}.*.part``, never a
  user's other ``.part`` files) are removed; a lock file stops two runs from
  sharing a directory, and ``.asyncimg-server`` remembers which server filled it
  (a run against another server is refused, so an emulator's placeholders are
  never taken for real results);
* a batch stops early, sending nothing new, on a fatal error (a refused key,
  permission, an unknown model or URL, an exhausted quota), a local failure
  (a full disk), a line of input that does not decode, or a signal; what is
  finished is written to the manifest first.

A kill between the images and the line costs one repeated request: the rerun
writes the same file names again.

Each run also appends one line to ``DIR/runs.jsonl`` when it ends (interrupted
or not): its start and end times, the configured rate, the time waited on the
limiter, its counts. With the manifest's send times (``sent``) that is what
``asyncimg report`` draws its rate chart from.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import hashlib
import json
import os
import re
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
import attrs

from .._exceptions import APIStatusError, AsyncImgError, ValidationError
from .._keywords import GENERATE_KEYWORDS
from .._limiter import LimiterStats, RateLimit
from .._params import GenerateParams
from .._retry import ATTEMPT_LOG, AttemptLog
from .._version import __version__
from .control import BatchControl, fatal_error
from .input import InputError, TextLines, open_text
from .many import BatchIterator, make_item

if TYPE_CHECKING:
    from .._client import AsyncImagesClient
    from .._models import Usage

__all__ = [
    "INPUT_FORMATS",
    "MANIFEST_NAME",
    "RUNS_NAME",
    "SERVER_NAME",
    "BatchSummary",
    "Entry",
    "InputError",
    "Manifest",
    "ProgressSink",
    "Record",
    "check_batch_params",
    "estimate_eta",
    "open_text",
    "public_url",
    "read_entries",
    "run_batch",
]

MANIFEST_NAME: Final = "manifest.jsonl"
RUNS_NAME: Final = "runs.jsonl"
LOCK_NAME: Final = ".asyncimg.lock"
SERVER_NAME: Final = ".asyncimg-server"
INPUT_FORMATS: Final = ("txt", "jsonl", "csv")
# Parameters that do not change the images, so not part of an item's id.
_NOT_IN_ID = frozenset({"timeout", "max_retries"})
_INT_PARAMS = frozenset({"n", "output_compression", "max_retries"})
_FLOAT_PARAMS = frozenset({"timeout"})
# Our temporary files only: an image's (``.{id}-{i}.XXXX.part``) or the compaction's.
_PART = re.compile(
    r"^\.(?:[0-9a-f]{16}(?:-[0-9]+)?-[0-9]+\..+|" + re.escape(MANIFEST_NAME) + r"\.compact)\.part$"
)
# Per-call settings that generate() takes but are not request parameters.
_CALL_SETTINGS = frozenset({"timeout", "max_retries", "extra_body"})


# -- the input ------------------------------------------------------------------------


@attrs.frozen
class Entry:
    """One item of the input: where it was, its prompt, its own parameters, its id.

    ``problem`` is set when the line cannot become a request (bad JSON, no prompt);
    such an entry becomes a failed item.
    """

    line: int
    prompt: str
    params: Mapping[str, Any]
    id: str
    problem: str | None = None


def _item_id(prompt: str, params: Mapping[str, Any], seen: dict[str, int]) -> str:
    key = {k: v for k, v in params.items() if k not in _NOT_IN_ID and v is not None}
    canonical = json.dumps(
        {"prompt": prompt, "params": key}, sort_keys=True, ensure_ascii=False, default=str
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    count = seen.get(digest, 0) + 1
    seen[digest] = count
    return digest if count == 1 else f"{digest}-{count}"


def _coerce(name: str, value: str) -> Any:
    if name in _INT_PARAMS:
        try:
            return int(value)
        except ValueError:
            return value  # generate() reports it, naming the parameter
    if name in _FLOAT_PARAMS:
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _raw_records(stream: Iterable[str], fmt: str) -> Iterator[tuple[int, object, str | None]]:
    """``(line, record, problem)``: a record is a str prompt or a mapping."""
    if fmt == "txt":
        for number, text in enumerate(stream, 1):
            prompt = text.strip()
            if prompt and not prompt.startswith("#"):
                yield number, prompt, None
    elif fmt == "jsonl":
        for number, text in enumerate(stream, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, text.strip(), f"line {number} is not valid JSON: {exc.msg}"
                continue
            if isinstance(record, (str, dict)):
                yield number, record, None
            else:
                yield number, text.strip(), f"line {number} is not a JSON object or string"
    elif fmt == "csv":
        reader = csv.DictReader(stream)
        if reader.fieldnames is None:
            return
        fields = [f.strip() for f in reader.fieldnames]
        if "prompt" not in fields:
            raise InputError("the CSV file needs a header row with a 'prompt' column")
        reader.fieldnames = fields
        for row in reader:
            values = {
                k: _coerce(k, v.strip())
                for k, v in row.items()
                if k is not None and isinstance(v, str) and v.strip() != ""
            }
            if not values:
                continue
            yield reader.line_num, values, None
    else:
        raise InputError(f"unknown input format {fmt!r} (one of {', '.join(INPUT_FORMATS)})")


def read_entries(
    stream: Iterable[str], fmt: str, params: Mapping[str, Any]
) -> Iterator[Entry]:
    """The entries of an input stream, lazily.

    ``fmt`` is ``txt`` (a prompt a line; blank lines and lines starting with ``#``
    are skipped), ``jsonl`` (a JSON object a line: ``prompt`` plus parameters; or a
    JSON string) or ``csv`` (a header row with a ``prompt`` column; other non-empty
    columns are parameters). ``params`` are the batch's parameters: an entry's id
    covers them under its own.

    Raises:
        InputError: the whole input is unusable (a CSV file without a prompt column),
            or a line does not decode (from :func:`open_text`'s streams).
    """
    seen: dict[str, int] = {}
    for line, record, problem in _raw_records(stream, fmt):
        if isinstance(record, str):
            prompt, own = record, {}
        else:
            assert isinstance(record, dict)
            raw = record.get("prompt")
            own = {str(k): v for k, v in record.items() if k != "prompt"}
            if isinstance(raw, str):
                prompt = raw
            else:
                prompt = "" if raw is None else json.dumps(raw)
                problem = problem or f"line {line} has no string 'prompt'"
        effective = {**params, **own}
        yield Entry(line, prompt, own, _item_id(prompt, effective, seen), problem)


def detect_format(path: str, given: str | None) -> str:
    """The input format: ``given``, else from the file's suffix (``txt`` for others and stdin)."""
    if given:
        return given
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    if suffix == "csv":
        return "csv"
    return "txt"


# -- the manifest ---------------------------------------------------------------------


@attrs.frozen
class Record:
    """One finished item: what becomes a manifest line.

    ``sent`` holds ``(time.time(), images)`` for each attempt, taken when its
    images were granted by the limiter; ``rate_limited`` counts its attempts
    answered 429; ``usage`` is the server's token usage, when it sent one.
    """

    id: str
    line: int
    prompt: str
    params: Mapping[str, Any]
    status: str
    files: tuple[str, ...] = ()
    images: int = 0
    error: Mapping[str, Any] | None = None
    request_id: str | None = None
    revised_prompt: str | None = None
    attempts: int | None = None
    seconds: float = 0.0
    sent: tuple[tuple[float, int], ...] = ()
    rate_limited: int = 0
    usage: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True for a done item."""
        return self.status == "ok"

    def to_json(self) -> str:
        """The manifest line (with its newline)."""
        body = {
            "id": self.id,
            "line": self.line,
            "prompt": self.prompt,
            "params": dict(self.params),
            "status": self.status,
            "files": list(self.files),
            "error": None if self.error is None else dict(self.error),
            "request_id": self.request_id,
            "revised_prompt": self.revised_prompt,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
            "sent": [{"at": round(at, 3), "images": n} for at, n in self.sent],
            "rate_limited": self.rate_limited,
            "usage": None if self.usage is None else dict(self.usage),
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
        }
        return json.dumps(body, ensure_ascii=False, default=str) + "\n"


def error_fields(exc: BaseException) -> dict[str, Any]:
    """The manifest's ``error`` object: type, code, status, param, message."""
    status = exc.status_code if isinstance(exc, APIStatusError) else None
    code = getattr(exc, "code", None)
    param = getattr(exc, "param", None)
    message = getattr(exc, "message", None) or str(exc)
    return {
        "type": type(exc).__name__,
        "code": code,
        "status": status,
        "param": param,
        "message": message,
    }


@attrs.define
class Manifest:
    """``DIR/manifest.jsonl``: read and compacted at start, then appended to, durably.

    After :meth:`open`, ``done`` holds the ids to skip, and ``dropped``, ``torn``
    say what the compaction removed.
    """

    directory: Path
    retry_failed: bool = True
    server: str | None = None
    done: set[str] = attrs.field(factory=set)
    failed_kept: int = 0
    dropped: int = 0
    torn: int = 0
    _file: IO[bytes] | None = None
    _lock: IO[bytes] | None = None

    @property
    def path(self) -> Path:
        """Where the manifest lives."""
        return self.directory / MANIFEST_NAME

    def open(self) -> None:
        """Lock the directory, clean it, read and compact the manifest, open it for appending.

        With ``server`` set, the directory remembers it (``.asyncimg-server``) and
        refuses a run against another one. The lock is released when this fails.

        Raises:
            InputError: another run holds the directory, or another server filled it.
            OSError: the directory cannot be written.
        """
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.directory / LOCK_NAME, "ab")  # noqa: SIM115
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            pass
        else:
            try:
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._lock.close()
                self._lock = None
                raise InputError(
                    f"another asyncimg batch is writing to {self.directory}"
                ) from None
        self._check_server()
        for leftover in self.directory.iterdir():
            if _PART.match(leftover.name) and leftover.is_file():
                with contextlib.suppress(OSError):
                    leftover.unlink()
        self._compact()
        self._file = open(self.path, "ab")  # noqa: SIM115

    def _check_server(self) -> None:
        if self.server is None:
            return
        mark = self.directory / SERVER_NAME
        try:
            known = mark.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            known = ""
        if not known:
            mark.write_text(self.server + "\n", encoding="utf-8")
            return
        if known != self.server:
            raise InputError(
                f"{self.directory} holds results from {known}, and this run talks to "
                f"{self.server}: its done items would be skipped and their images kept. "
                f"Use another output directory, or delete {mark} to mix the two."
            )

    def _compact(self) -> None:
        path = self.path
        if not path.exists():
            return
        latest: dict[str, tuple[int, int, bool, bool]] = {}  # id -> (offset, length, keep, ok)
        total = 0
        bad = 0
        with open(path, "rb") as f:
            offset = 0
            for raw in f:
                length = len(raw)
                here = offset
                offset += length
                total += 1
                if not raw.endswith(b"\n"):
                    self.torn += 1
                    continue
                try:
                    record = json.loads(raw)
                    item_id = record["id"]
                    status = record.get("status")
                    files = record.get("files") or []
                except (ValueError, KeyError, TypeError):
                    bad += 1
                    continue
                if not isinstance(item_id, str):
                    bad += 1
                    continue
                if status == "ok":
                    keep = bool(files) and all(
                        isinstance(name, str) and (self.directory / name).is_file()
                        for name in files
                    )
                else:
                    keep = not self.retry_failed
                latest[item_id] = (here, length, keep, status == "ok")
        kept = sorted((off, length) for off, length, keep, _ in latest.values() if keep)
        for item_id, (_, _, keep, ok) in latest.items():
            if keep:
                self.done.add(item_id)
                self.failed_kept += not ok
        self.dropped = total - len(kept) - self.torn
        if len(kept) == total:
            return
        tmp = path.with_name(f".{MANIFEST_NAME}.compact.part")
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            for off, length in kept:
                src.seek(off)
                dst.write(src.read(length))
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)

    def append(self, record: Record) -> None:
        """Append one line and make it durable (write, flush, fsync)."""
        assert self._file is not None
        self._file.write(record.to_json().encode())
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the manifest and release the lock."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    batch: Any = None
    """The Batch API route: what the last poll of the current batch said."""

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
            self.recent.append((time.monotonic(), len(record.files)))
        else:
            self.failed += 1
            if len(self.failures) < self.max_failures_kept:
                self.failures.append(record)
        self.busy_seconds += record.seconds

    def _recent_images(self, now: float) -> int:
        while self.recent and self.recent[0][0] <= now - self.window:
            self.recent.popleft()
        return sum(n for _t, n in self.recent)

    @property
    def images_per_minute(self) -> float:
        """Images saved per minute: over the last window while running, else over the run.

        With a rate it is measured over at least one window and never reads as
        more than the limit: a sliding window lets a full budget go at once, so
        a short run's raw figure would exceed the sustained rate.
        """
        if self.elapsed:
            span = max(self.elapsed, self.window) if self.rate is not None else self.elapsed
            value = self.images * 60.0 / span if span > 0 else 0.0
        else:
            now = time.monotonic()
            span = self.window if self.rate is not None else min(now - self.started, 60.0)
            value = self._recent_images(now) * 60.0 / span if span > 0 else 0.0
        if self.rate is None:
            return value
        return min(value, self.rate.images * 60.0 / self.rate.per)

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
    entries: Iterator[Entry], done: set[str], summary: BatchSummary, *, count: bool
) -> Iterator[Entry]:
    for entry in entries:
        if entry.id in done:
            summary.skipped += count
            continue
        yield entry


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

    Raises:
        ValidationError: ``params`` break the rules (see :func:`check_batch_params`);
            nothing was sent and the directory is untouched.
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
    manifest = Manifest(
        folder, retry_failed=retry_failed, server=server or public_url(client.base_url)
    )
    try:
        await anyio.to_thread.run_sync(manifest.open)
        # The client's default model changes the images: it is in every id too.
        effective = {"model": client.model, **params} if client.model else params
        total: int | None = None
        skipped = 0
        if count_first:

            def count() -> tuple[int, int]:
                with open_input() as stream:
                    ids = [e.id for e in read_entries(stream, fmt, effective)]
                done = sum(1 for i in ids if i in manifest.done)
                return len(ids) - done, done

            total, skipped = await anyio.to_thread.run_sync(count)
        summary = BatchSummary(
            total=total,
            skipped=skipped,
            failed_earlier=0 if retry_failed else manifest.failed_kept,
            rate=getattr(client.limiter, "rate", None),
            images_per_item=params.get("n") or 1,
        )
        wall_start = time.time()
        before = client.limiter.stats()
        stream = open_input()
        try:
            entries = _skip_done(
                read_entries(stream, fmt, effective), manifest.done, summary,
                count=not count_first,
            )

            async def work(index: int, entry: Entry) -> Record | None:
                return await control.run(
                    lambda attempts: _run_entry(
                        client, entry, effective, allowed, folder, attempts, control
                    )
                )

            _observe(summary, client)
            sink.start(summary)
            batch = BatchIterator(
                control.pull(entries, bad_input=InputError), work,
                concurrency=client._gate.ceiling, ready=client._gate.ready_limit,
            )
            async with batch, anyio.create_task_group() as tg:

                async def ticker() -> None:
                    while True:
                        await anyio.sleep(1.0)
                        _observe(summary, client)
                        sink.tick(summary)

                tg.start_soon(ticker)
                async for record in batch:
                    if record is None or control.reason == "aborted":
                        continue
                    try:
                        await anyio.to_thread.run_sync(manifest.append, record)
                    except OSError as exc:
                        control.stop(
                            "aborted", f"cannot write {manifest.path}: {exc}", cancel_sent=True
                        )
                        continue
                    summary.count(record)
                    _observe(summary, client)
                    sink.item(record, summary)
                tg.cancel_scope.cancel()
        finally:
            stream.close()
            summary.elapsed = time.monotonic() - summary.started
            summary.stopped, summary.stop_message = control.reason, control.message
            with contextlib.suppress(OSError):  # a full disk: the summary still comes
                _append_run(folder, client, params, summary, wall_start, before)
            sink.stop(summary)
        return summary
    finally:
        manifest.close()


def public_url(url: str) -> str:
    """``url`` without credentials or a query: what may be written to disk."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _append_run(
    folder: Path,
    client: AsyncImagesClient,
    params: Mapping[str, Any],
    summary: BatchSummary,
    wall_start: float,
    before: LimiterStats,
) -> None:
    """Append this run's line to ``runs.jsonl`` (a few hundred bytes, once: on the loop)."""
    after = client.limiter.stats()
    rate = getattr(client.limiter, "rate", None)
    line = {
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
        "version": __version__,
    }
    with open(folder / RUNS_NAME, "ab") as f:
        f.write((json.dumps(line, ensure_ascii=False, default=str) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


async def _run_entry(
    client: AsyncImagesClient,
    entry: Entry,
    params: Mapping[str, Any],
    allowed: frozenset[str],
    folder: Path,
    attempts: list[int],
    control: BatchControl,
) -> Record | None:
    effective = {k: v for k, v in {**params, **entry.params}.items() if v is not None}
    log = AttemptLog()

    def record(**fields: Any) -> Record:
        return Record(
            entry.id, entry.line, entry.prompt, effective,
            sent=tuple(log.sent), rate_limited=log.rate_limited, **fields,
        )

    if entry.problem is not None:
        return record(
            status="failed",
            error={"type": "InputError", "code": None, "status": None, "param": None,
                   "message": entry.problem},
            attempts=0,
        )
    started = time.monotonic()
    token = ATTEMPT_LOG.set(log)
    try:
        item = await make_item(
            client, 0, {"prompt": entry.prompt, **entry.params}, params, allowed, attempts
        )
    finally:
        ATTEMPT_LOG.reset(token)
    if item.response is None:
        assert item.error is not None
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
    try:
        paths = await client.save(response, folder, stem=entry.id, overwrite=True)
    except AsyncImgError as exc:
        return record(
            status="failed", error=error_fields(exc), request_id=response.request_id,
            attempts=item.attempts, seconds=time.monotonic() - started,
        )
    except OSError as exc:
        # Not the item's fault: stop the run and leave the item to a rerun.
        control.stop("aborted", f"cannot write images to {folder}: {exc}")
        return None
    revised = next((i.revised_prompt for i in response.data if i.revised_prompt), None)
    return record(
        status="ok",
        files=tuple(p.name for p in paths),
        images=len(paths),
        request_id=response.request_id,
        revised_prompt=revised,
        attempts=item.attempts,
        seconds=time.monotonic() - started,
        usage=None if response.usage is None else usage_fields(response.usage),
    )


def usage_fields(usage: Usage) -> dict[str, Any]:
    """The manifest's ``usage`` object: the token counts the server sent (None left out)."""
    return attrs.asdict(usage, filter=lambda a, v: a.name != "extra" and v is not None)
