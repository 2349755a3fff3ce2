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
* stale temporary files (``.*.part``) are removed; a lock file stops two runs
  from sharing a directory.

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
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
import attrs

from ._batch import BatchIterator, make_item
from ._exceptions import APIStatusError, AsyncImgError, ValidationError
from ._keywords import GENERATE_KEYWORDS
from ._limiter import LimiterStats, RateLimit
from ._retry import ATTEMPT_LOG, AttemptLog
from ._version import __version__

if TYPE_CHECKING:
    from ._client import AsyncImagesClient
    from ._models import Usage

__all__ = [
    "INPUT_FORMATS",
    "MANIFEST_NAME",
    "RUNS_NAME",
    "BatchSummary",
    "Entry",
    "InputError",
    "Manifest",
    "ProgressSink",
    "Record",
    "read_entries",
    "run_batch",
]

MANIFEST_NAME: Final = "manifest.jsonl"
RUNS_NAME: Final = "runs.jsonl"
LOCK_NAME: Final = ".asyncimg.lock"
INPUT_FORMATS: Final = ("txt", "jsonl", "csv")
# Parameters that do not change the images, so not part of an item's id.
_NOT_IN_ID = frozenset({"timeout", "max_retries"})
_INT_PARAMS = frozenset({"n", "output_compression", "max_retries"})
_FLOAT_PARAMS = frozenset({"timeout"})
_PART = re.compile(r"^\..+\.part$")


class InputError(Exception):
    """The input file cannot be read at all (not one bad line: those are failed items)."""


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


def _raw_records(stream: IO[str], fmt: str) -> Iterator[tuple[int, object, str | None]]:
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
    stream: IO[str], fmt: str, params: Mapping[str, Any]
) -> Iterator[Entry]:
    """The entries of an input stream, lazily.

    ``fmt`` is ``txt`` (a prompt a line; blank lines and lines starting with ``#``
    are skipped), ``jsonl`` (a JSON object a line: ``prompt`` plus parameters; or a
    JSON string) or ``csv`` (a header row with a ``prompt`` column; other non-empty
    columns are parameters). ``params`` are the batch's parameters: an entry's id
    covers them under its own.

    Raises:
        InputError: the whole input is unusable (a CSV file without a prompt column).
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

        Raises:
            InputError: another run holds the directory.
            OSError: the directory cannot be written.
        """
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
        for leftover in self.directory.iterdir():
            if _PART.match(leftover.name) and leftover.is_file():
                with contextlib.suppress(OSError):
                    leftover.unlink()
        self._compact()
        self._file = open(self.path, "ab")  # noqa: SIM115

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


# -- the limiter meter ------------------------------------------------------------------


# -- running a batch --------------------------------------------------------------------


@attrs.define
class BatchSummary:
    """What a run did."""

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
    def images_per_minute(self) -> float:
        """Images saved per minute of this run."""
        seconds = self.elapsed or (time.monotonic() - self.started)
        return self.images * 60.0 / seconds if seconds > 0 else 0.0


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


def _skip_done(entries: Iterator[Entry], done: set[str], summary: BatchSummary) -> Iterator[Entry]:
    for entry in entries:
        if entry.id in done:
            summary.skipped += 1
            continue
        yield entry


async def run_batch(
    client: AsyncImagesClient,
    open_input: Callable[[], IO[str]],
    fmt: str,
    directory: str | os.PathLike[str],
    *,
    params: Mapping[str, Any] | None = None,
    retry_failed: bool = True,
    count_first: bool = True,
    progress: ProgressSink | None = None,
) -> BatchSummary:
    """Run every not-yet-done item of the input into ``directory`` (see the module doc).

    Args:
        client: the client; its limiter's ``stats().waited`` gives the time waited.
        open_input: opens the input (called twice when ``count_first``).
        fmt: ``txt``, ``jsonl`` or ``csv``.
        directory: where the images and ``manifest.jsonl`` go.
        params: parameters for every item (an item's own override them).
        retry_failed: run the items whose last line says failed again.
        count_first: read the input once first to count what is left (a file, not stdin).
        progress: told about every finished item.

    Raises:
        ValidationError: ``params`` names a parameter generate does not take.
        InputError: the input is unusable, or another run holds the directory.
        OSError: the directory cannot be written.
    """
    params = dict(params or {})
    allowed = GENERATE_KEYWORDS
    for key in params:
        if key not in allowed:
            raise ValidationError(key, f"generate() takes no parameter {key!r}")
    folder = Path(directory)
    sink = progress or ProgressSink()
    manifest = Manifest(folder, retry_failed=retry_failed)
    await anyio.to_thread.run_sync(manifest.open)
    try:
        total: int | None = None
        if count_first:

            def count() -> int:
                with open_input() as stream:
                    return sum(
                        1 for e in read_entries(stream, fmt, params) if e.id not in manifest.done
                    )

            total = await anyio.to_thread.run_sync(count)
        summary = BatchSummary(total=total)
        wall_start = time.time()
        before = client.limiter.stats()
        stream = open_input()
        try:
            entries = _skip_done(read_entries(stream, fmt, params), manifest.done, summary)

            async def work(index: int, entry: Entry) -> Record:
                return await _run_entry(client, entry, params, allowed, folder)

            sink.start(summary)
            batch = BatchIterator(entries, work, concurrency=client.max_concurrency)
            async with batch, anyio.create_task_group() as tg:

                async def ticker() -> None:
                    while True:
                        await anyio.sleep(1.0)
                        summary.waited = client.limiter.stats().waited
                        sink.tick(summary)

                tg.start_soon(ticker)
                async for record in batch:
                    await anyio.to_thread.run_sync(manifest.append, record)
                    summary.rate_limited += record.rate_limited
                    if record.ok:
                        summary.ok += 1
                        summary.images += len(record.files)
                    else:
                        summary.failed += 1
                        if len(summary.failures) < summary.max_failures_kept:
                            summary.failures.append(record)
                    summary.waited = client.limiter.stats().waited
                    sink.item(record, summary)
                tg.cancel_scope.cancel()
        finally:
            stream.close()
            summary.elapsed = time.monotonic() - summary.started
            _append_run(folder, client, params, summary, wall_start, before)
            sink.stop(summary)
        return summary
    finally:
        manifest.close()


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
) -> Record:
    log = AttemptLog()

    def record(**fields: Any) -> Record:
        return Record(
            entry.id, entry.line, entry.prompt, entry.params,
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
            client, 0, {"prompt": entry.prompt, **entry.params}, params, allowed
        )
    finally:
        ATTEMPT_LOG.reset(token)
    if item.response is None:
        assert item.error is not None
        return record(
            status="failed", error=error_fields(item.error),
            attempts=item.attempts, seconds=item.seconds,
        )
    response = item.response
    try:
        paths = await client.save(response, folder, stem=entry.id, overwrite=True)
    except AsyncImgError as exc:
        return record(
            status="failed", error=error_fields(exc), request_id=response.request_id,
            attempts=item.attempts, seconds=time.monotonic() - started,
        )
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


def open_text(path: str) -> Callable[[], IO[str]]:
    """An opener for ``path`` (``-``: standard input, opened once)."""
    if path == "-":
        return lambda: sys.stdin
    return lambda: open(path, encoding="utf-8-sig", newline="")
