"""The manifest of a batch directory: the one module that writes and reads its schema.

``DIR/manifest.jsonl`` holds a line per finished item (:class:`Record`), written
durably (write, flush, fsync) after the item's images (the lines of the items
that finished while the last fsync ran are written together, with one fsync);
``DIR/runs.jsonl`` a line per run (:class:`Run`). At start the manifest is read
and compacted: a torn last line is dropped, the latest line of an id wins, a done
line counts only if its files exist; lines of items that will run again (failed
ones, when failed items are retried) are dropped, and the manifest is rewritten
atomically if anything was dropped. So every id has at most one line, whenever
the process is killed. A lock file stops two runs from sharing a directory, and
``.asyncimg-server`` remembers which server filled it.

A shard (``--shard K/N``) writes its own files in the same directory:
``manifest-KofN.jsonl``, ``runs-KofN.jsonl``, its own lock and server mark, so N
shards on N machines share one directory (a shared filesystem) without a lock
fight; each treats the done items of the directory's other manifests as done too
(read only), and :func:`read_records` / :func:`read_runs` read all of them as one job.

Reading is lenient (:meth:`Record.from_json`): a manifest written by an older
version, or edited by hand, reads with defaults for what is missing or odd.
"""

from __future__ import annotations

import array
import contextlib
import datetime
import itertools
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Final

import attrs

from .._exceptions import APIStatusError
from .._fs import open_new
from .._json import float_field, int_field
from .._models import Usage
from .input import InputError, Shard

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "RUNS_NAME",
    "SERVER_NAME",
    "Manifest",
    "Record",
    "Run",
    "append_run",
    "error_fields",
    "json_lines",
    "manifest_path",
    "manifest_paths",
    "read_records",
    "read_runs",
    "sends_of",
    "sent_json",
    "usage_fields",
]

MANIFEST_NAME: Final = "manifest.jsonl"
RUNS_NAME: Final = "runs.jsonl"
LOCK_NAME: Final = ".asyncimg.lock"
SERVER_NAME: Final = ".asyncimg-server"
# Our temporary files only: an image's (``.{id}-{i}.XXXX.part``) or the compaction's.
_PART = re.compile(
    r"^\.(?:(?P<id>[0-9a-f]{16}(?:-[0-9]+)?)-[0-9]+\..+|manifest(?:-[0-9]+of[0-9]+)?\.jsonl"
    r"\.compact)\.part$"
)
_MANIFESTS = re.compile(r"^manifest(?:-[0-9]+of[0-9]+)?\.jsonl$")
_RUNS = re.compile(r"^runs(?:-[0-9]+of[0-9]+)?\.jsonl$")


def _named(name: str, shard: Shard | None) -> str:
    """``manifest.jsonl``, or a shard's ``manifest-2of5.jsonl``."""
    if shard is None:
        return name
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-{shard.name}{dot}{ext}" if stem and not stem.startswith(".") \
        else f"{name}-{shard.name}"


def manifest_path(directory: Path, shard: Shard | None = None) -> Path:
    """Where the manifest of ``directory`` (of one shard of it) is written."""
    return directory / _named(MANIFEST_NAME, shard)


def manifest_paths(directory: Path) -> list[Path]:
    """The manifests in ``directory``: ``manifest.jsonl`` and every shard's, by name."""
    try:
        names = sorted(name for name in os.listdir(directory) if _MANIFESTS.match(name))
    except OSError:
        return []
    return [directory / name for name in names if (directory / name).is_file()]


@attrs.frozen
class Record:
    """One finished item: a manifest line, as written and as read back.

    ``sent`` holds ``(time.time(), images)`` for each attempt, taken when it
    went on the wire (when its images were granted, for one that never left);
    ``rate_limited`` counts its attempts answered 429; ``usage`` is the server's
    token usage, when it sent one; ``cost_usd`` what the item cost in USD (from its
    usage and the price table; None when unknown, and for a failed item);
    ``finished_at`` (epoch seconds) is set when the line is read back (a new line is
    stamped with the time it is written).
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
    finished_at: float | None = None
    cost_usd: float | None = None

    @property
    def ok(self) -> bool:
        """True for a done item."""
        return self.status == "ok"

    @property
    def send_times(self) -> tuple[tuple[float, int], ...]:
        """When its images were sent; for an older manifest, its finish time minus its seconds."""
        if self.sent:
            return self.sent
        if self.finished_at is None or not self.ok:
            return ()
        return ((self.finished_at - self.seconds, max(1, len(self.files))),)

    def to_json(self) -> str:
        """The manifest line (with its newline)."""
        finished = datetime.datetime.now(datetime.timezone.utc) if self.finished_at is None \
            else datetime.datetime.fromtimestamp(self.finished_at, datetime.timezone.utc)
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
            "sent": sent_json(self.sent),
            "rate_limited": self.rate_limited,
            "usage": None if self.usage is None else dict(self.usage),
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 8),
            "finished_at": finished.isoformat(timespec="milliseconds"),
        }
        return json.dumps(body, ensure_ascii=False, default=str) + "\n"

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Record:
        """Build from a decoded manifest line (missing or odd fields get defaults).

        Raises:
            KeyError: the line has no ``id``.
        """
        sent = sends_of(obj.get("sent"))
        params, error, usage = obj.get("params"), obj.get("error"), obj.get("usage")
        files = tuple(f for f in obj.get("files") or () if isinstance(f, str))
        status = obj.get("status")
        return cls(
            id=str(obj["id"]),
            line=int_field(obj, "line") or 0,
            prompt=str(obj.get("prompt") or ""),
            params=params if isinstance(params, Mapping) else {},
            status=status if isinstance(status, str) else "failed",
            files=files,
            images=len(files),
            error=error if isinstance(error, Mapping) else None,
            request_id=_text(obj.get("request_id")),
            revised_prompt=_text(obj.get("revised_prompt")),
            attempts=int_field(obj, "attempts"),
            seconds=float_field(obj, "seconds") or 0.0,
            sent=tuple(sent),
            rate_limited=int_field(obj, "rate_limited") or 0,
            usage=usage if isinstance(usage, Mapping) else None,
            finished_at=_epoch(obj.get("finished_at")),
            cost_usd=float_field(obj, "cost_usd"),
        )


def sends_of(value: Any) -> list[tuple[float, int]]:
    """``(at, images)`` pairs of a ``sent`` list as written (``[{"at", "images"}]``); odd entries
    are passed over."""
    sends: list[tuple[float, int]] = []
    if not isinstance(value, list):
        return sends
    for entry in value:
        if isinstance(entry, Mapping):
            at = float_field(entry, "at")
            if at is not None:
                sends.append((at, max(1, int_field(entry, "images") or 0)))
    return sends


def sent_json(sends: Iterable[tuple[float, int]]) -> list[dict[str, Any]]:
    """A ``sent`` list as written: ``[{"at": epoch seconds, "images": n}]``."""
    return [{"at": round(at, 3), "images": n} for at, n in sends]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _epoch(iso: Any) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        return datetime.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


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
    say what the compaction removed; ``recent_sends`` the ``(at, images)`` sends of
    every line (those dropped too) at or after ``sends_since`` (epoch seconds),
    and of ``runs.jsonl``'s items that were sent but never finished: what an
    earlier run spent in the rate window still open.
    """

    directory: Path
    retry_failed: bool = True
    server: str | None = None
    sends_since: float | None = None
    recent_sends: list[tuple[float, int]] = attrs.field(factory=list)
    done: set[str] = attrs.field(factory=set)
    failed_kept: int = 0
    dropped: int = 0
    torn: int = 0
    shard: Shard | None = None
    _file: IO[bytes] | None = None
    _lock: IO[bytes] | None = None

    @property
    def path(self) -> Path:
        """Where the manifest lives."""
        return manifest_path(self.directory, self.shard)

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
        self._lock = open(self.directory / _named(LOCK_NAME, self.shard), "ab")  # noqa: SIM115
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
            part = _PART.match(leftover.name)
            if part and self._mine(part) and leftover.is_file():
                with contextlib.suppress(OSError):
                    leftover.unlink()
        self._compact()
        self._done_elsewhere()
        runs = self.directory / _named(RUNS_NAME, self.shard)
        if self.sends_since is not None and runs.is_file():
            for run in json_lines(runs):
                self._keep_sends(run.get("unfinished_sent"))
        self._file = open(self.path, "ab")  # noqa: SIM115

    def _mine(self, part: re.Match[str]) -> bool:
        """A leftover part file this run may delete: not another shard's, being written."""
        if self.shard is None:
            return True
        if part["id"] is None:
            return part[0] == f".{self.path.name}.compact.part"
        return self.shard.holds(part["id"])

    def _done_elsewhere(self) -> None:
        """The done items of the directory's other manifests (other shards, an unsharded
        run) are done here too: read only, their writers may be at work."""
        is_file = _file_checker(self.directory)
        for other in manifest_paths(self.directory):
            if other.name == self.path.name:
                continue
            for obj in json_lines(other):
                item_id, files = obj.get("id"), obj.get("files")
                if (isinstance(item_id, str) and obj.get("status") == "ok"
                        and isinstance(files, list) and files
                        and all(isinstance(name, str) and is_file(name) for name in files)):
                    self.done.add(item_id)

    def _keep_sends(self, value: Any) -> None:
        since = self.sends_since
        if since is not None:
            self.recent_sends.extend(s for s in sends_of(value) if s[0] >= since)

    def _check_server(self) -> None:
        if self.server is None:
            return
        mark = self.directory / _named(SERVER_NAME, self.shard)
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
        # One pass keeps per line one byte (kept or not) and the hash of its id, and the
        # set of done ids: a million-line manifest fits in about 100 MB. Ids seen twice
        # (a retried item) are resolved by a second look at their lines only.
        path = self.path
        if not path.exists():
            return
        keep_line = bytearray()
        hashes = array.array("q")
        done = self.done
        others: set[str] = set()  # ids whose latest line is not kept
        failed: set[str] = set()  # done ids whose latest line is a failure
        twice: set[str] = set()
        is_file = _file_checker(self.directory)
        with open(path, "rb") as f:
            for raw in f:
                judged = self._judge_line(raw, is_file)
                if judged is None:
                    keep_line.append(0)
                    hashes.append(0)
                    continue
                name, keep, ok = judged
                hashes.append(hash(name))
                if name in done or name in others:
                    twice.add(name)
                if keep:
                    done.add(name)
                    others.discard(name)
                    if ok:
                        failed.discard(name)
                    else:
                        failed.add(name)
                else:
                    others.add(name)
                    done.discard(name)
                    failed.discard(name)
                keep_line.append(keep)
        if twice:
            self._drop_superseded(keep_line, hashes, twice)
        del hashes
        self.failed_kept = len(failed)
        total = len(keep_line)
        kept = sum(keep_line)
        self.dropped = total - kept - self.torn
        if kept == total:
            return
        tmp = path.with_name(f".{path.name}.compact.part")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a crashed run's (or a planted symlink: never followed)
        with open(path, "rb") as src, open_new(tmp) as dst:
            for raw, keep_it in zip(src, keep_line, strict=True):
                if keep_it:
                    dst.write(raw)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)

    def _judge_line(
        self, raw: bytes, is_file: Callable[[str], bool]
    ) -> tuple[str, int, bool] | None:
        """``(id, kept (1 or 0), ok)`` of a manifest line; None for a torn or unreadable one."""
        if not raw.endswith(b"\n"):
            self.torn += 1
            return None
        try:
            record = json.loads(raw)
            item_id = record["id"]
            status = record.get("status")
            files = record.get("files") or []
            self._keep_sends(record.get("sent"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if not isinstance(item_id, str):
            return None
        if status == "ok":
            keep = bool(files) and all(isinstance(name, str) and is_file(name) for name in files)
        else:
            keep = not self.retry_failed
        return item_id, int(keep), status == "ok"

    def _drop_superseded(
        self, keep_line: bytearray, hashes: array.array[int], twice: set[str]
    ) -> None:
        """Unmark every line of an id in ``twice`` but its latest (the latest line wins)."""
        wanted = {hash(name) for name in twice}
        lines: dict[str, list[int]] = {}
        with open(self.path, "rb") as f:
            for index, raw in enumerate(f):
                if hashes[index] not in wanted or not raw.endswith(b"\n"):
                    continue
                try:
                    item_id = json.loads(raw).get("id")
                except (ValueError, AttributeError):
                    continue
                if item_id in twice:
                    lines.setdefault(item_id, []).append(index)
        for indexes in lines.values():
            for index in indexes[:-1]:
                keep_line[index] = 0

    def append(self, record: Record) -> None:
        """Append one line and make it durable (write, flush, fsync).

        Raises:
            OSError: the line cannot be written.
        """
        self.append_many((record,))

    def append_many(self, records: Iterable[Record]) -> None:
        """Append a group of lines and make them durable with one fsync (a group commit).

        Each line is whole before the next begins, so a process killed mid-group leaves
        whole lines and at most a torn last one (dropped when the manifest is read).

        Raises:
            OSError: the lines cannot be written.
        """
        assert self._file is not None
        self._file.write("".join(record.to_json() for record in records).encode())
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


def _file_checker(directory: Path) -> Callable[[str], bool]:
    """``is_file(name)`` for names in ``directory``: one ``lstat`` each, no path objects.

    Only a plain name (no separator, no ``..``) of a regular file counts: a path out
    of the directory, or a symlink (ours are never links), is not a done item's file.
    """
    base = os.fspath(directory)

    def is_file(name: str) -> bool:
        if not name or name in (".", "..") or os.sep in name or (os.altsep or os.sep) in name:
            return False
        try:
            return stat.S_ISREG(os.lstat(os.path.join(base, name)).st_mode)
        except (OSError, ValueError):
            return False

    return is_file


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@attrs.frozen
class Run:
    """One line of ``runs.jsonl``: a run of ``asyncimg batch`` in this directory."""

    started_at: float
    finished_at: float
    seconds: float
    rate: tuple[int, float] | None
    params: Mapping[str, Any]
    images: int
    waited: float
    rate_limited: int
    unfinished_sent: tuple[tuple[float, int], ...] = ()
    """Sends of items that were on their way when the run stopped (no manifest line)."""
    route: str = "direct"
    """``"direct"`` or ``"batch-api"`` (whose pace is the API's: no rate, no sends)."""

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Run | None:
        """Build from a decoded line; None when it has no start or end time."""
        start, end = float_field(obj, "started_at"), float_field(obj, "finished_at")
        if start is None or end is None:
            return None
        raw = obj.get("rate")
        rate = None
        if isinstance(raw, Mapping):
            images, per = (int_field(raw, "images") or 0), float_field(raw, "per")
            if images > 0 and per is not None and per > 0:
                rate = (images, per)
        params = obj.get("params")
        return cls(
            started_at=start,
            finished_at=max(start, end),
            seconds=float_field(obj, "seconds") or max(0.0, end - start),
            rate=rate,
            params=params if isinstance(params, Mapping) else {},
            images=(int_field(obj, "images") or 0),
            waited=float_field(obj, "waited") or 0.0,
            rate_limited=(int_field(obj, "rate_limited") or 0),
            unfinished_sent=tuple(sends_of(obj.get("unfinished_sent"))),
            route="batch-api" if obj.get("route") == "batch-api" else "direct",
        )


def json_lines(path: Path) -> Iterable[Mapping[str, Any]]:
    """The JSON objects of a JSON Lines file; a torn last line or a line that is not an
    object is passed over.

    Lines are decoded :data:`_JSON_BLOCK` at a time as one array (one call into the C
    decoder instead of one per line); a block with a line that is not one JSON value
    is decoded line by line."""
    with open(path, "rb") as f:
        while block := list(itertools.islice(f, _JSON_BLOCK)):
            if not block[-1].endswith(b"\n"):
                block.pop()  # a torn last line
            try:
                values = json.loads(b"[" + b",".join(block) + b"]")
            except ValueError:
                values = None
            if values is None or len(values) != len(block):
                values = []
                for raw in block:
                    try:
                        values.append(json.loads(raw))
                    except ValueError:
                        continue
            for obj in values:
                if isinstance(obj, dict):  # what json.loads makes of an object
                    yield obj


_JSON_BLOCK: Final = 4096


def read_records(directory: Path) -> list[Record]:
    """The items of ``directory``'s manifests (``manifest.jsonl`` and every shard's, one
    job), in input order. Within a manifest the latest line of an id wins; across
    manifests (a directory sharded one way, then another), a done line wins over a
    failed one, then the one finished last.

    Raises:
        InputError: there is no manifest.
    """
    paths = manifest_paths(directory)
    if not paths:
        raise InputError(f"no {MANIFEST_NAME} in {directory}: is it the -o DIR of a batch?")
    latest: dict[str, Record] = {}
    for path in paths:
        mine: dict[str, Record] = {}
        for obj in json_lines(path):
            if isinstance(obj.get("id"), str):
                mine[obj["id"]] = Record.from_json(obj)
        for item_id, record in mine.items():
            known = latest.get(item_id)
            if known is None or _rank(record) > _rank(known):
                latest[item_id] = record
    return sorted(latest.values(), key=lambda item: item.line)


def _rank(record: Record) -> tuple[bool, float]:
    return record.ok, record.finished_at or 0.0


def read_runs(directory: Path) -> list[Run]:
    """The runs recorded in ``runs.jsonl`` and every shard's ``runs-KofN.jsonl``, oldest
    first (none for an older version)."""
    try:
        names = sorted(name for name in os.listdir(directory) if _RUNS.match(name))
        paths = [directory / name for name in names if (directory / name).is_file()]
    except OSError:
        return []
    runs = (Run.from_json(obj) for path in paths for obj in json_lines(path))
    return sorted((run for run in runs if run is not None), key=lambda run: run.started_at)


def append_run(directory: Path, line: Mapping[str, Any], shard: Shard | None = None) -> None:
    """Append one run's line to ``runs.jsonl`` (a shard's: ``runs-KofN.jsonl``) and make it
    durable (a few hundred bytes, once).

    Raises:
        OSError: the file cannot be written.
    """
    with open(directory / _named(RUNS_NAME, shard), "ab") as f:
        f.write((json.dumps(line, ensure_ascii=False, default=str) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def usage_fields(usage: Usage) -> dict[str, Any]:
    """The manifest's ``usage`` object: the token counts the server sent (None left out)."""
    return attrs.asdict(usage, filter=lambda a, v: a.name != "extra" and v is not None)
