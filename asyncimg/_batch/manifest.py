"""The manifest of a batch directory: the one module that writes and reads its schema.

``DIR/manifest.jsonl`` holds a line per finished item (:class:`Record`), written
durably (write, flush, fsync) after the item's images (the lines of the items
that finished while the last group was written are written together, with one fsync);
``DIR/runs.jsonl`` a line per run (:class:`Run`). At start the manifest is read
and compacted: a torn last line is dropped, the latest line of an id wins, a done
line counts only if its files exist (a line of the writer's own form is read
without decoding it whole, the files are checked with one listing of the
directory, the done ids are kept as numbers: a million lines take seconds and
about 50 MB); lines of items that will run again (failed
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
import bisect
import contextlib
import datetime
import itertools
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
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
    "DoneIds",
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
# A line as :meth:`Record.to_json` writes it, read without json.loads (see _line_fields):
# its id, line, prompt (any JSON string), params (an object with no object inside), then
# the status and files. No string of JSON holds an unescaped quote, so the match can end
# nowhere but at the line's own status and files.
_CANONICAL = re.compile(
    rb'\{"id": "([0-9a-f]{16}(?:-[0-9]+)?)", "line": -?[0-9]+, "prompt": "[^"\\]*(?:\\.[^"\\]*)*", '
    rb'"params": \{[^{}]*\}, "status": "(ok|failed)", '
    rb'"files": \[((?:"[^"\\]*")(?:, "[^"\\]*")*)?\], "error": '
)
_SENT_KEY = b', "sent": '
_SENT_END = b', "rate_limited": '
_HEX = "0123456789abcdef"
_STAT_FIRST = 4096
"""Files checked with one ``lstat`` each before the directory is listed once instead."""


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
    return _files_named(directory, _MANIFESTS)


def _files_named(directory: Path, pattern: re.Pattern[str]) -> list[Path]:
    """The regular files of ``directory`` whose names match ``pattern``, by name (none if
    it cannot be listed)."""
    try:
        names = sorted(name for name in os.listdir(directory) if pattern.match(name))
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


class DoneIds(Set[str]):
    """The ids of done items, compact: a million take about 8 MB, not 100.

    An id the batch makes (16 hex digits, :mod:`.input`) is kept as a 64-bit number in
    a sorted array (looked up by bisection); any other id (one of the input's own,
    a repeated prompt's ``{hash}-2``) in a set. :meth:`add` puts one more in;
    :meth:`merge` many at once (one sort).
    """

    def __init__(self, keys: Iterable[int] = (), others: Iterable[str] = ()) -> None:
        self._keys = _sorted_unique(keys)
        self._added: set[int] = set()
        self._others = set(others)

    @staticmethod
    def key(item_id: str) -> int | None:
        """The number an id is kept as, or None for an id not of the batch's own form."""
        return int(item_id, 16) if len(item_id) == 16 and not item_id.strip(_HEX) else None

    def _has_key(self, key: int) -> bool:
        keys = self._keys
        at = bisect.bisect_left(keys, key)
        return (at < len(keys) and keys[at] == key) or key in self._added

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, str):
            return False
        key = self.key(item)
        return item in self._others if key is None else self._has_key(key)

    def __len__(self) -> int:
        return len(self._keys) + len(self._added) + len(self._others)

    def __iter__(self) -> Iterator[str]:
        for key in itertools.chain(self._keys, self._added):
            yield f"{key:016x}"
        yield from self._others

    def add(self, item_id: str) -> None:
        """Count ``item_id`` as done."""
        key = self.key(item_id)
        if key is None:
            self._others.add(item_id)
        elif not self._has_key(key):
            self._added.add(key)

    def merge(self, ids: Iterable[str]) -> None:
        """Count all of ``ids`` as done (one sort, however many)."""
        keys = array.array("Q")
        for item_id in ids:
            key = self.key(item_id)
            if key is None:
                self._others.add(item_id)
            else:
                keys.append(key)
        if keys:
            self._keys = _sorted_unique(itertools.chain(self._keys, self._added, keys))
            self._added.clear()


def _sorted_unique(keys: Iterable[int]) -> array.array[int]:
    return array.array("Q", (key for key, _ in itertools.groupby(sorted(keys))))


# A manifest line's state while the manifest is compacted (one byte a line), and the
# tables that turn states into selectors for itertools.compress (1: selected).
_UNREADABLE, _DONE, _FAILED, _DROP = 0, 1, 2, 3
_KEPT = bytes([0, 1, 1, 0]) + bytes(252)
_READ = bytes([0, 1, 1, 1]) + bytes(252)


def _selector(state: bytearray, table: bytes, odd: Iterable[int]) -> bytearray:
    """Per line, 1 where ``table`` selects its state, but 0 at the lines in ``odd``."""
    selected = state.translate(table)
    for index in odd:
        selected[index] = 0
    return selected


def _line_fields(raw: bytes, want_sends: bool) -> tuple[str, bool, list[str], Any] | None:
    """``(id, ok, files, sent)`` of a whole manifest line; None for an unreadable one.

    A line of :meth:`Record.to_json`'s own form is read by its fixed layout (one regular
    expression from its start to its files; the ``sent`` list, only when ``want_sends``,
    found from the end); any other line (an older version's, one edited by hand, one
    whose params hold an object) is decoded whole. ``sent`` is None when not wanted.
    """
    line = _CANONICAL.match(raw)
    if line is not None:
        names = line[3]
        files = names[1:-1].decode().split('", "') if names else []
        sent = None
        if want_sends:
            start = raw.rfind(_SENT_KEY) + len(_SENT_KEY)
            end = raw.find(_SENT_END, start)
            if start < len(_SENT_KEY) or end < 0:
                return _decoded_fields(raw, want_sends)
            try:
                sent = json.loads(raw[start:end])
            except ValueError:
                return _decoded_fields(raw, want_sends)
        return line[1].decode(), line[2] == b"ok", files, sent
    return _decoded_fields(raw, want_sends)


def _decoded_fields(raw: bytes, want_sends: bool) -> tuple[str, bool, list[str], Any] | None:
    try:
        record = json.loads(raw)
        item_id = record["id"]
        status = record.get("status")
        files = record.get("files") or []
        sent = record.get("sent") if want_sends else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(item_id, str):
        return None
    if not (isinstance(files, list) and all(isinstance(name, str) for name in files)):
        files = []
    return item_id, status == "ok", files, sent


def _copy_lines(src: IO[bytes], dst: IO[bytes], kept: bytes | bytearray,
                ends: array.array[int]) -> None:
    """Copy the lines of ``src`` selected in ``kept`` (1 a line) to ``dst``, in blocks:
    each run of kept lines at once, ``ends`` giving where each line ends."""
    index = 0
    while index < len(kept):
        stop = kept.find(0, index)  # the first dropped line of this run
        stop = len(kept) if stop < 0 else stop
        if stop > index:
            start = ends[index - 1] if index else 0
            _copy_range(src, dst, start, ends[stop - 1] - start)
        skip = kept.find(1, stop)
        index = len(kept) if skip < 0 else skip


def _copy_range(src: IO[bytes], dst: IO[bytes], start: int, left: int) -> None:
    """``left`` bytes of ``src`` from ``start`` appended to ``dst``: in the kernel
    (``os.copy_file_range``) where it can, else read and written in blocks."""
    dst.flush()
    copy = getattr(os, "copy_file_range", None)
    while left > 0 and copy is not None:
        try:
            done = copy(src.fileno(), dst.fileno(), left, start)
        except OSError:
            break
        if not done:
            return
        start += done
        left -= done
    src.seek(start)
    while left > 0:
        block = src.read(min(left, 1 << 22))
        if not block:
            return
        dst.write(block)
        left -= len(block)


def _drop_superseded(keys: array.array[int], state: bytearray, odd: Mapping[int, str]) -> None:
    """Mark every line of an id seen twice but its latest as dropped (the latest wins)."""
    ordered = sorted(itertools.compress(keys, _selector(state, _READ, odd)))
    twice = {a for a, b in itertools.pairwise(ordered) if a == b}
    del ordered
    if not twice and len(set(odd.values())) == len(odd):
        return
    seen_keys: set[int] = set()
    seen_ids: set[str] = set()
    for index in range(len(state) - 1, -1, -1):
        if state[index] == _UNREADABLE:
            continue
        item_id = odd.get(index)
        if item_id is not None:
            if item_id in seen_ids:
                state[index] = _DROP
            seen_ids.add(item_id)
        elif keys[index] in twice:
            if keys[index] in seen_keys:
                state[index] = _DROP
            seen_keys.add(keys[index])


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
    done: DoneIds = attrs.field(factory=DoneIds)
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
            with open(other, "rb") as f:
                fields = (_line_fields(raw, want_sends=False) for raw in f
                          if raw.endswith(b"\n"))
                self.done.merge(
                    item_id for item_id, ok, files, _ in filter(None, fields)
                    if ok and files and all(is_file(name) for name in files))

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
        # One pass keeps per line its state (a byte) and its id's key (8 bytes, see
        # DoneIds); the lines of an id seen twice (a retried item) are then resolved
        # from the end (the latest line wins). A million-line manifest takes about 20 MB.
        path = self.path
        if not path.exists():
            return
        keys = array.array("Q")
        state = bytearray()
        ends = array.array("Q")  # per line, the offset of its end
        odd: dict[int, str] = {}  # line -> id, for ids DoneIds keeps in a set
        is_file = _file_checker(self.directory)
        want_sends = self.sends_since is not None
        end = 0
        with open(path, "rb") as f:
            for index, raw in enumerate(f):
                end += len(raw)
                ends.append(end)
                if not raw.endswith(b"\n"):
                    self.torn += 1
                    fields = None
                else:
                    fields = _line_fields(raw, want_sends)
                if fields is None:
                    keys.append(0)
                    state.append(_UNREADABLE)
                    continue
                item_id, ok, files, sent = fields
                if want_sends:
                    self._keep_sends(sent)
                if ok:
                    kept = _DONE if files and all(is_file(name) for name in files) else _DROP
                else:
                    kept = _DROP if self.retry_failed else _FAILED
                key = DoneIds.key(item_id)
                if key is None:
                    odd[index] = item_id
                    key = 0
                keys.append(key)
                state.append(kept)
        _drop_superseded(keys, state, odd)
        self.done = DoneIds(
            itertools.compress(keys, _selector(state, _KEPT, odd)),
            (item_id for index, item_id in odd.items() if state[index] in (_DONE, _FAILED)),
        )
        self.failed_kept = state.count(_FAILED)
        total = len(state)
        kept = total - state.count(_DROP) - state.count(_UNREADABLE)
        self.dropped = total - kept - self.torn
        del keys
        if kept == total:
            return
        tmp = path.with_name(f".{path.name}.compact.part")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a crashed run's (or a planted symlink: never followed)
        with open(path, "rb") as src, open_new(tmp) as dst:
            _copy_lines(src, dst, state.translate(_KEPT), ends)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)

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
    """``is_file(name)`` for names in ``directory``: an ``lstat`` each for the first
    few thousand, then one listing of the directory (``os.scandir``) for all the rest.

    Only a plain name (no separator, no ``..``) of a regular file counts: a path out
    of the directory, or a symlink (ours are never links), is not a done item's file.
    The listing keeps the hash of each regular file's name (8 bytes a file).
    """
    base = os.fspath(directory)
    checked = 0
    listed: array.array[int] | None = None

    def is_file(name: str) -> bool:
        nonlocal checked, listed
        if not name or name in (".", "..") or os.sep in name or (os.altsep or os.sep) in name:
            return False
        if listed is None:
            checked += 1
            if checked <= _STAT_FIRST:
                try:
                    return stat.S_ISREG(os.lstat(os.path.join(base, name)).st_mode)
                except (OSError, ValueError):
                    return False
            listed = _listing(base)
        key = hash(name)
        at = bisect.bisect_left(listed, key)
        return at < len(listed) and listed[at] == key

    return is_file


def _listing(base: str) -> array.array[int]:
    """The sorted hashes of the names of the regular files in ``base`` (none if unreadable)."""
    try:
        with os.scandir(base) as entries:
            hashes = array.array("q", (hash(entry.name) for entry in entries
                                       if entry.is_file(follow_symlinks=False)))
    except OSError:
        return array.array("q")
    return array.array("q", sorted(hashes))


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
    paths = _files_named(directory, _RUNS)
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
